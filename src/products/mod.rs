//! The host's matrix products: one entry point (`multiply`) over the `gemm` crate, whose
//! kernels are chosen at run time for the CPU it finds (AVX-512F, AVX2+FMA, NEON, or scalar),
//! run on rayon's current thread pool (all cores unless the caller or `--threads` says
//! otherwise). Built with the `openblas` feature, the products go to the system's OpenBLAS
//! instead (its own run-time kernels and threads), where the strides allow. Where the system
//! has oneDNN (`libdnnl.so.2`, opened at run time: `onednn/`), its matmul primitives can take
//! them: f32, and AMX or AVX-512 BF16 for `multiply_bf16`'s bf16 x bf16 -> f32.
//!
//! `METACOMPRESS_CPU_KERNELS` picks the kernels: `auto` (OpenBLAS when built in, else `gemm`;
//! and `--precision bf16`'s products through oneDNN where its kernels have bf16 arithmetic,
//! AVX-512 BF16 or AMX: `bf16_on_onednn`), `gemm`,
//! `openblas`, `onednn`, or `portable`: a plain product with no SIMD kernel at all, the same
//! on every CPU. The tests force `portable` to check the path a CPU without those units takes,
//! and a user can use it to rule out a kernel fault. `gemm` does not expose its own choice,
//! so the forced level is ours (a dozen lines, correct and slow, never chosen by default).

use std::sync::OnceLock;

use crate::error::{Error, Result};

/// The environment variable that forces the product kernels.
pub const KERNELS_VARIABLE: &str = "METACOMPRESS_CPU_KERNELS";

/// Which product kernels run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernels {
    /// `gemm`'s kernels for this CPU (the default without the `openblas` feature).
    Simd,
    /// The system's OpenBLAS (the default with the `openblas` feature).
    OpenBlas,
    /// The system's oneDNN, opened at run time (forced by `METACOMPRESS_CPU_KERNELS=onednn`;
    /// `auto` gives it the bf16 products only, where it has bf16 units).
    OneDnn,
    /// A plain row-by-row product, no SIMD kernel (forced by `METACOMPRESS_CPU_KERNELS`).
    Portable,
}

impl Kernels {
    /// The kernels `METACOMPRESS_CPU_KERNELS` asks for (read once per process): unset, empty
    /// or `auto` for the build's default (OpenBLAS when built in, else `gemm`; oneDNN takes
    /// the bf16 products where it has bf16 units: `bf16_on_onednn`), `gemm`, `openblas` (when
    /// built in), `onednn` (refused when the library does not open) or `portable`; any other
    /// value is refused.
    pub fn chosen() -> Result<Kernels> {
        setting()
            .clone()
            .map(|(kernels, _)| kernels)
            .map_err(Error::InvalidArgument)
    }

    /// What runs the products, for people: the instruction set of the kernels and the threads.
    pub fn describe(self) -> String {
        let threads = rayon::current_num_threads();
        match self {
            Kernels::Simd => format!("gemm {} kernels, {threads} threads", simd_level()),
            Kernels::OpenBlas => format!("OpenBLAS, {threads} threads"),
            Kernels::OneDnn => match onednn::library() {
                Ok(library) => format!(
                    "oneDNN {} {} kernels, {} threads ({})",
                    library.version,
                    library.isa,
                    library.threads(),
                    library.runtime
                ),
                Err(_) => "oneDNN (not loaded)".to_string(),
            },
            Kernels::Portable => "portable kernels (forced, no SIMD), 1 thread".to_string(),
        }
    }
}

/// The kernels `METACOMPRESS_CPU_KERNELS` asks for, and whether it said `auto` (or nothing).
fn setting() -> &'static std::result::Result<(Kernels, bool), String> {
    static SETTING: OnceLock<std::result::Result<(Kernels, bool), String>> = OnceLock::new();
    SETTING.get_or_init(|| {
        let value = std::env::var(KERNELS_VARIABLE).unwrap_or_default();
        let built_in = if cfg!(feature = "openblas") {
            "auto, gemm, openblas, onednn or portable"
        } else {
            "auto, gemm, onednn or portable (openblas needs the openblas feature)"
        };
        match value.trim() {
            "" | "auto" if cfg!(feature = "openblas") => Ok((Kernels::OpenBlas, true)),
            "" | "auto" => Ok((Kernels::Simd, true)),
            "gemm" => Ok((Kernels::Simd, false)),
            "openblas" if cfg!(feature = "openblas") => Ok((Kernels::OpenBlas, false)),
            "onednn" => onednn::library()
                .map(|_| (Kernels::OneDnn, false))
                .map_err(|why| {
                    format!(
                        "{KERNELS_VARIABLE}=onednn: {why} (install libdnnl-dev 2.x, or set {} \
                         to its libdnnl.so.2)",
                        onednn::LIBRARY_VARIABLE
                    )
                }),
            "portable" => Ok((Kernels::Portable, false)),
            other => Err(format!(
                "{KERNELS_VARIABLE}={} is not a kernel level of this build; expected {built_in}",
                crate::error::quoted(other)
            )),
        }
    })
}

/// Whether `--precision bf16` runs its products as bf16 x bf16 -> f32 through oneDNN: when the
/// kernels are forced to `onednn`, or under `auto` where oneDNN opens and its kernels for this
/// CPU have bf16 arithmetic (AVX-512 BF16 or AMX). Measured on the 2-core AMX VM (2026-12-02):
/// oneDNN's bf16 forward 3x `gemm`'s (bf16 storage rounded in f32), while oneDNN's f32
/// forward was no faster than `gemm`'s there, so `auto` keeps f32 on `gemm` (or OpenBLAS),
/// and a CPU without bf16 units (AVX2, plain AVX-512) is not touched.
pub fn bf16_on_onednn() -> bool {
    match setting() {
        Ok((Kernels::OneDnn, _)) => true,
        Ok((_, true)) => onednn::library().is_ok_and(|library| library.bf16_units),
        _ => false,
    }
}

/// What runs `--precision bf16`'s products under `auto` when oneDNN takes them, for people.
pub fn describe_onednn_bf16() -> Option<String> {
    let library = onednn::library().ok()?;
    Some(format!(
        "oneDNN {} {} bf16 kernels, {} threads ({})",
        library.version,
        library.isa,
        library.threads(),
        library.runtime
    ))
}

/// The instruction set `gemm` picks on this CPU (the order of its own run-time checks).
pub fn simd_level() -> &'static str {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            "AVX-512F"
        } else if std::arch::is_x86_feature_detected!("fma") {
            "AVX2+FMA"
        } else {
            "scalar"
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        "NEON"
    }
    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64", target_arch = "aarch64")))]
    {
        "scalar"
    }
}

/// Most output rows of a product cut into bands of columns, one per thread.
const SKINNY_ROWS: usize = 96;

/// Fewest columns a band gets.
const MIN_BAND_COLUMNS: usize = 256;

/// The element types products take.
pub trait Element:
    Copy + Send + Sync + 'static + std::ops::Add<Output = Self> + std::ops::Mul<Output = Self>
{
    /// Zero.
    const ZERO: Self;
    /// One.
    const ONE: Self;
}

impl Element for f32 {
    const ZERO: f32 = 0.0;
    const ONE: f32 = 1.0;
}

impl Element for f64 {
    const ZERO: f64 = 0.0;
    const ONE: f64 = 1.0;
}

/// A read-only matrix view: element `(r, c)` is `data[r * row_stride + c * column_stride]`.
#[derive(Clone, Copy)]
pub struct View<'a, T> {
    data: &'a [T],
    rows: usize,
    columns: usize,
    row_stride: usize,
    column_stride: usize,
}

impl<'a, T> View<'a, T> {
    /// `data` as a row-major `rows x columns` matrix.
    pub fn row_major(data: &'a [T], rows: usize, columns: usize) -> Self {
        View::strided(data, rows, columns, columns, 1)
    }

    /// `data` with the given strides.
    pub fn strided(
        data: &'a [T],
        rows: usize,
        columns: usize,
        row_stride: usize,
        column_stride: usize,
    ) -> Self {
        View {
            data,
            rows,
            columns,
            row_stride,
            column_stride,
        }
    }

    /// The transpose (no copy).
    pub fn transposed(self) -> Self {
        View {
            rows: self.columns,
            columns: self.rows,
            row_stride: self.column_stride,
            column_stride: self.row_stride,
            ..self
        }
    }

    /// The same view as a `View<U>` when `U` is `T` itself.
    fn cast<U: 'static>(&self) -> Option<View<'a, U>>
    where
        T: 'static,
    {
        (std::any::TypeId::of::<T>() == std::any::TypeId::of::<U>()).then(|| View {
            // SAFETY: `T` and `U` are the same type.
            data: unsafe {
                std::slice::from_raw_parts(self.data.as_ptr() as *const U, self.data.len())
            },
            rows: self.rows,
            columns: self.columns,
            row_stride: self.row_stride,
            column_stride: self.column_stride,
        })
    }

    fn fits(&self) -> bool {
        fits(
            self.data.len(),
            self.rows,
            self.columns,
            self.row_stride,
            self.column_stride,
        )
    }
}

/// A matrix view to write: element `(r, c)` is `data[r * row_stride + c * column_stride]`.
pub struct ViewMut<'a, T> {
    data: &'a mut [T],
    rows: usize,
    columns: usize,
    row_stride: usize,
    column_stride: usize,
}

impl<'a, T> ViewMut<'a, T> {
    /// `data` as a row-major `rows x columns` matrix.
    pub fn row_major(data: &'a mut [T], rows: usize, columns: usize) -> Self {
        ViewMut::strided(data, rows, columns, columns, 1)
    }

    /// `data` with the given strides (rows `row_stride` apart: a block of a wider matrix).
    pub fn strided(
        data: &'a mut [T],
        rows: usize,
        columns: usize,
        row_stride: usize,
        column_stride: usize,
    ) -> Self {
        ViewMut {
            data,
            rows,
            columns,
            row_stride,
            column_stride,
        }
    }
}

impl<T: 'static> ViewMut<'_, T> {
    /// The same view as a `ViewMut<U>` when `U` is `T` itself.
    fn cast<U: 'static>(&mut self) -> Option<ViewMut<'_, U>> {
        (std::any::TypeId::of::<T>() == std::any::TypeId::of::<U>()).then(|| ViewMut {
            // SAFETY: `T` and `U` are the same type; the borrow of `self` is held.
            data: unsafe {
                std::slice::from_raw_parts_mut(self.data.as_mut_ptr() as *mut U, self.data.len())
            },
            rows: self.rows,
            columns: self.columns,
            row_stride: self.row_stride,
            column_stride: self.column_stride,
        })
    }
}

/// `value` as a `U` when `U` is `T` itself.
fn cast_scalar<T: Copy + 'static, U: Copy + 'static>(value: T) -> Option<U> {
    (std::any::TypeId::of::<T>() == std::any::TypeId::of::<U>())
        // SAFETY: `T` and `U` are the same type.
        .then(|| unsafe { std::mem::transmute_copy(&value) })
}

/// Whether every element of a `rows x columns` view with these strides lies in `len` values.
fn fits(len: usize, rows: usize, columns: usize, row_stride: usize, column_stride: usize) -> bool {
    if rows == 0 || columns == 0 {
        return true;
    }
    (rows - 1)
        .checked_mul(row_stride)
        .zip((columns - 1).checked_mul(column_stride))
        .and_then(|(r, c)| r.checked_add(c))
        .is_some_and(|last| last < len)
}

/// What a product does to its output.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Update<T> {
    /// `out = a b`.
    Overwrite,
    /// `out += scale * a b`.
    Add(T),
}

/// Panics unless `a b` fits `out` and every view lies inside its data, the output's elements
/// distinct.
fn check<A, O>(a: &View<A>, b: &View<A>, out: &ViewMut<O>) {
    assert_eq!(a.columns, b.rows, "inner sizes differ");
    assert!(
        a.rows == out.rows && b.columns == out.columns,
        "output size differs"
    );
    assert!(a.fits() && b.fits(), "a view reaches past its data");
    assert!(
        fits(
            out.data.len(),
            out.rows,
            out.columns,
            out.row_stride,
            out.column_stride
        ),
        "the output reaches past its data"
    );
    let (rows, columns) = (out.rows, out.columns);
    if rows > 1 && columns > 1 {
        // Distinct elements of the output must not share memory.
        assert!(
            out.row_stride != out.column_stride
                && (out.row_stride >= columns * out.column_stride
                    || out.column_stride >= rows * out.row_stride),
            "the output's elements overlap"
        );
    }
}

/// `out = a b` or `out += scale * a b` (`update`).
pub fn multiply<T: Element>(a: View<T>, b: View<T>, mut out: ViewMut<T>, update: Update<T>) {
    check(&a, &b, &out);
    let (rows, inner, columns) = (out.rows, a.columns, out.columns);
    if rows == 0 || columns == 0 {
        return;
    }
    let (read_out, scale) = match update {
        Update::Overwrite => (false, T::ONE),
        Update::Add(scale) => (true, scale),
    };
    if inner == 0 {
        if !read_out {
            for r in 0..rows {
                for c in 0..columns {
                    out.data[r * out.row_stride + c * out.column_stride] = T::ZERO;
                }
            }
        }
        return;
    }
    // The level was checked when the backend opened; an unreadable one means Simd here.
    let kernels = Kernels::chosen().unwrap_or(Kernels::Simd);
    #[cfg(feature = "openblas")]
    if kernels == Kernels::OpenBlas && openblas::multiply(&a, &b, &mut out, read_out, scale) {
        return;
    }
    if kernels == Kernels::OneDnn {
        if let (Some(a), Some(b), Some(mut out), Some(scale)) = (
            a.cast::<f32>(),
            b.cast::<f32>(),
            out.cast::<f32>(),
            cast_scalar::<T, f32>(scale),
        ) {
            if onednn::multiply(&a, &b, &mut out, onednn::DataType::F32, read_out, scale) {
                return;
            }
        }
    }
    match kernels {
        // OpenBLAS and oneDNN take what they can express (f32, and f64 for OpenBLAS); gemm
        // the rest.
        Kernels::Simd | Kernels::OpenBlas | Kernels::OneDnn => {
            // gemm threads a product across its output's long side; a product with few rows
            // (the short queries of a small image: 64 x 576 x 4096) runs faster as one
            // single-threaded product per thread on a band of columns (1.3-1.5x measured).
            let threads = rayon::current_num_threads();
            let bands = if rows <= SKINNY_ROWS && columns >= threads * MIN_BAND_COLUMNS {
                threads
            } else {
                1
            };
            multiply_in_bands(&a, &b, &mut out, read_out, scale, bands);
        }
        Kernels::Portable => {
            for r in 0..rows {
                for c in 0..columns {
                    let mut sum = T::ZERO;
                    for k in 0..inner {
                        sum = sum
                            + a.data[r * a.row_stride + k * a.column_stride]
                                * b.data[k * b.row_stride + c * b.column_stride];
                    }
                    let slot = &mut out.data[r * out.row_stride + c * out.column_stride];
                    *slot = if read_out { *slot + scale * sum } else { sum };
                }
            }
        }
    }
}

/// `out (+)= scale a b` through `gemm`, as `bands` single-threaded products on bands of
/// columns run in parallel, or with one band, one product threaded by `gemm`. The views
/// were checked by `multiply`.
fn multiply_in_bands<T: Element>(
    a: &View<T>,
    b: &View<T>,
    out: &mut ViewMut<T>,
    read_out: bool,
    scale: T,
    bands: usize,
) {
    let (rows, inner, columns) = (out.rows, a.columns, out.columns);
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 && bands == 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // Raw pointers as addresses, so that the bands can cross threads.
    let (a_at, b_at, out_at) = (
        a.data.as_ptr() as usize,
        b.data.as_ptr() as usize,
        out.data.as_mut_ptr() as usize,
    );
    let band = |index: usize| {
        let first = columns * index / bands;
        let count = columns * (index + 1) / bands - first;
        // SAFETY: every element each view addresses lies inside its slice and distinct output
        // elements do not overlap (both checked by `multiply`), so the bands' outputs are
        // disjoint; `out` is an exclusive borrow held until every band is done, so it aliases
        // neither input.
        unsafe {
            gemm::gemm(
                rows,
                count,
                inner,
                (out_at as *mut T).add(first * out.column_stride),
                out.column_stride as isize,
                out.row_stride as isize,
                read_out,
                a_at as *const T,
                a.column_stride as isize,
                a.row_stride as isize,
                (b_at as *const T).add(first * b.column_stride),
                b.column_stride as isize,
                b.row_stride as isize,
                T::ONE,
                scale,
                false,
                false,
                false,
                parallelism,
            );
        }
    };
    if bands <= 1 {
        band(0);
    } else {
        use rayon::prelude::*;
        (0..bands).into_par_iter().for_each(band);
    }
}

#[cfg(feature = "openblas")]
mod openblas;

mod onednn;

/// Whether the system's oneDNN opens (once per process; `METACOMPRESS_ONEDNN_LIBRARY` names
/// another file to open).
pub fn onednn_loads() -> bool {
    onednn::library().is_ok()
}

/// oneDNN's matmul rate (GFLOP/s) on `shapes` (`rows x inner x columns` each, plain row-major
/// operands), in bf16 x bf16 -> f32 or f32: each product's best of three runs (after one
/// untimed, which also makes its primitive), their flops over the sum of those times. `None`
/// where oneDNN does not open.
pub fn onednn_rate(shapes: &[(usize, usize, usize)], bf16: bool) -> Option<f64> {
    onednn::library().ok()?;
    let (mut flops, mut seconds) = (0.0, 0.0);
    for &(rows, inner, columns) in shapes {
        let value = |i: usize| ((i * 7919) % 1009) as f32 / 1009.0 - 0.5;
        let a: Vec<f32> = (0..rows * inner).map(value).collect();
        let b: Vec<f32> = (0..inner * columns).map(|i| value(i + 17)).collect();
        let (a16, b16): (Vec<half::bf16>, Vec<half::bf16>) = (
            a.iter().map(|&v| half::bf16::from_f32(v)).collect(),
            b.iter().map(|&v| half::bf16::from_f32(v)).collect(),
        );
        let mut out = vec![0.0f32; rows * columns];
        let mut best = f64::INFINITY;
        for run in 0..4 {
            let mut target = ViewMut::row_major(&mut out, rows, columns);
            let started = std::time::Instant::now();
            // One primitive on oneDNN's own (OpenMP) threads, as the pool has.
            let done = if bf16 {
                onednn::multiply_on(
                    &View::row_major(&a16, rows, inner),
                    &View::row_major(&b16, inner, columns),
                    &mut target,
                    onednn::DataType::Bf16,
                    false,
                    1.0,
                    false,
                )
            } else {
                onednn::multiply_on(
                    &View::row_major(&a, rows, inner),
                    &View::row_major(&b, inner, columns),
                    &mut target,
                    onednn::DataType::F32,
                    false,
                    1.0,
                    false,
                )
            };
            if !done {
                return None;
            }
            if run > 0 {
                best = best.min(started.elapsed().as_secs_f64());
            }
        }
        flops += 2.0 * (rows * inner * columns) as f64;
        seconds += best;
    }
    Some(flops / seconds / 1e9)
}

/// `out = a b` or `out += scale * a b` with bf16 inputs and an f32 output, the products of
/// `--precision bf16` on the oneDNN path: through oneDNN (AMX or AVX-512 BF16 where the CPU
/// has them) when it opens, else the inputs widened to f32 (exactly) and `multiply`.
pub fn multiply_bf16(
    a: View<half::bf16>,
    b: View<half::bf16>,
    mut out: ViewMut<f32>,
    update: Update<f32>,
) {
    check(&a, &b, &out);
    let (read_out, scale) = match update {
        Update::Overwrite => (false, 1.0),
        Update::Add(scale) => (true, scale),
    };
    if out.rows == 0 || out.columns == 0 {
        return;
    }
    if a.columns > 0 && onednn::multiply(&a, &b, &mut out, onednn::DataType::Bf16, read_out, scale)
    {
        return;
    }
    let widen = |view: &View<half::bf16>| -> Vec<f32> {
        let mut values = vec![0.0f32; view.rows * view.columns];
        for r in 0..view.rows {
            for c in 0..view.columns {
                values[r * view.columns + c] =
                    view.data[r * view.row_stride + c * view.column_stride].to_f32();
            }
        }
        values
    };
    let (a_values, b_values) = (widen(&a), widen(&b));
    multiply(
        View::row_major(&a_values, a.rows, a.columns),
        View::row_major(&b_values, b.rows, b.columns),
        out,
        update,
    );
}

/// `out = a b` into a row-major `out` of exactly `a.rows x b.columns`.
pub fn product<T: Element>(a: View<T>, b: View<T>, out: &mut [T]) {
    assert_eq!(out.len(), a.rows * b.columns, "output size differs");
    let (rows, columns) = (a.rows, b.columns);
    multiply(
        a,
        b,
        ViewMut::row_major(out, rows, columns),
        Update::Overwrite,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Products cut into bands of columns (more bands than columns included) against the
    /// textbook sum: overwrite and accumulate, a transposed operand, a strided output.
    #[test]
    fn products_in_bands_match_the_sum() {
        let (rows, inner, columns, stride) = (5, 7, 11, 13);
        let a: Vec<f32> = (0..rows * inner).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..columns * inner)
            .map(|i| (i as f32 * 0.91).cos())
            .collect();
        for bands in [1, 2, 3, 4, 11] {
            let mut out = vec![0.5f32; rows * stride];
            let (a_view, b_view) = (
                View::row_major(&a, rows, inner),
                View::row_major(&b, columns, inner).transposed(),
            );
            let mut target = ViewMut::strided(&mut out, rows, columns, stride, 1);
            multiply_in_bands(&a_view, &b_view, &mut target, true, 2.0, bands);
            for r in 0..rows {
                for c in 0..columns {
                    let sum: f32 = (0..inner)
                        .map(|k| a[r * inner + k] * b[c * inner + k])
                        .sum();
                    let got = out[r * stride + c];
                    assert!(
                        (got - (0.5 + 2.0 * sum)).abs() < 1e-5,
                        "{bands} bands: ({r}, {c})"
                    );
                }
                assert!(out[r * stride + columns..(r + 1) * stride]
                    .iter()
                    .all(|&v| v == 0.5));
            }
        }
    }

    /// A product of strided views against the textbook sum, both updates.
    #[test]
    fn strided_products_match_the_sum() {
        let (rows, inner, columns) = (7, 5, 3);
        let a: Vec<f64> = (0..rows * inner).map(|i| (i as f64 * 0.37).sin()).collect();
        // b stored transposed (columns x inner).
        let b: Vec<f64> = (0..columns * inner)
            .map(|i| (i as f64 * 0.91).cos())
            .collect();
        // The output is a block of a wider matrix (row stride 4, one spare column).
        let mut out = vec![9.0f64; rows * 4];
        multiply(
            View::row_major(&a, rows, inner),
            View::row_major(&b, columns, inner).transposed(),
            ViewMut::strided(&mut out, rows, columns, 4, 1),
            Update::Overwrite,
        );
        let mut doubled = out.clone();
        multiply(
            View::row_major(&a, rows, inner),
            View::row_major(&b, columns, inner).transposed(),
            ViewMut::strided(&mut doubled, rows, columns, 4, 1),
            Update::Add(-2.0),
        );
        for r in 0..rows {
            for c in 0..columns {
                let sum: f64 = (0..inner)
                    .map(|k| a[r * inner + k] * b[c * inner + k])
                    .sum();
                assert!((out[r * 4 + c] - sum).abs() < 1e-12);
                assert!((doubled[r * 4 + c] + sum).abs() < 1e-12);
            }
            assert_eq!(out[r * 4 + 3], 9.0, "the spare column is untouched");
        }
    }
}

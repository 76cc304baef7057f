//! The products through the system's oneDNN (Debian: libdnnl-dev), loaded at run time so that
//! the crate builds and runs without it: `libdnnl.so.2` (or the file
//! `METACOMPRESS_ONEDNN_LIBRARY` names) is opened once per process, a dozen functions of its
//! C API (version 2.x) are looked up by name, and each product shape gets one matmul primitive,
//! created once and kept (creating one costs far more than running a small product). oneDNN
//! picks its kernels for the CPU at run time (AVX2, AVX-512, AMX for bf16), which it reports
//! through `dnnl_get_effective_cpu_isa`. A library of another major version (3.x changed the
//! C API) is refused at open, in one line.
//!
//! oneDNN's memory and operation descriptors are plain C structs in 2.x (696 and 2800 bytes in
//! 2.6); they are held here as opaque, generously sized and aligned buffers that only the
//! library reads and writes, so no field of theirs is declared.
//!
//! The rooms: `library.rs` declares the C API and opens the library; `primitives.rs` makes
//! and keeps the primitives; this file runs the products on them.

use std::collections::HashMap;
use std::ffi::c_int;
use std::sync::{Arc, Mutex, OnceLock};

use crate::products::{View, ViewMut};

mod library;
mod primitives;

use library::{open, Api, ExecArg, Handle, ARG_DST, ARG_SRC, ARG_WEIGHTS, SUCCESS};
use primitives::{Key, Primitive};

/// The environment variable naming the oneDNN library to open (default `libdnnl.so.2`).
pub const LIBRARY_VARIABLE: &str = "METACOMPRESS_ONEDNN_LIBRARY";

/// oneDNN's element types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum DataType {
    F32 = 3,
    Bf16 = 2,
}

/// The opened library: its functions, one CPU engine, what it runs on, and the primitives
/// made so far.
pub(super) struct OneDnn {
    api: Api,
    engine: Handle,
    /// `major.minor.patch`.
    pub version: String,
    /// The instruction set its kernels use on this CPU (`dnnl_get_effective_cpu_isa`).
    pub isa: &'static str,
    /// Whether that set has bf16 arithmetic (AVX-512 BF16 or AMX).
    pub bf16_units: bool,
    /// The threading runtime it was built with (`OpenMP`, `TBB`, `sequential`, ...).
    pub runtime: &'static str,
    primitives: Mutex<HashMap<Key, Arc<Mutex<Primitive>>>>,
    /// Kept open for the process's life (the functions above point into it).
    _library: libloading::Library,
}

// SAFETY: the engine handle is only passed to oneDNN's functions, which may be called from any
// thread (oneDNN's engines are thread-safe); the cache is behind a mutex.
unsafe impl Send for OneDnn {}
unsafe impl Sync for OneDnn {}

static LIBRARY: OnceLock<Result<OneDnn, String>> = OnceLock::new();

/// The library, opened on first use (`Err`: why it could not be, in one line).
pub(super) fn library() -> Result<&'static OneDnn, String> {
    LIBRARY.get_or_init(open).as_ref().map_err(Clone::clone)
}

impl OneDnn {
    /// How many threads its products run on: the caller's rayon pool's size where the runtime
    /// takes a count (OpenMP), one for a sequential build.
    pub fn threads(&self) -> usize {
        match (self.runtime, self.api.omp_set_num_threads) {
            ("sequential", _) => 1,
            ("OpenMP", Some(_)) => rayon::current_num_threads(),
            _ => std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// Fewest output columns a band gets when a product is cut into one band per thread.
const MIN_BAND_COLUMNS: usize = 256;

/// Fewest output rows a band gets when a product too narrow for bands of columns is cut into
/// bands of rows.
const MIN_BAND_ROWS: usize = 64;

/// `out (+)= scale a b` through oneDNN, the inputs of type `A` (`input` names it: f32 or bf16),
/// the output f32; `false` (nothing done) when oneDNN has no primitive for the shape, for the
/// caller to compute otherwise. The views were checked by the caller.
///
/// On the path's threads: a product wide enough is cut into one band of output columns per
/// thread of rayon's current pool (or, too narrow for that but tall enough, of rows), each
/// band a single-threaded primitive run on a rayon worker (measured 1.3-2x faster on the
/// 2-core AMX VM than one OpenMP-threaded product, whose spinning workers fight rayon's for
/// the cores between products); a smaller one runs as one primitive on as many OpenMP threads
/// as the pool has.
pub(super) fn multiply<A: Sync>(
    a: &View<A>,
    b: &View<A>,
    out: &mut ViewMut<f32>,
    input: DataType,
    read_out: bool,
    scale: f32,
) -> bool {
    multiply_on(a, b, out, input, read_out, scale, true)
}

/// `multiply`, in bands only when `bands_allowed` (else one primitive on oneDNN's own threads:
/// the yardstick `onednn_rate` measures).
pub(super) fn multiply_on<A: Sync>(
    a: &View<A>,
    b: &View<A>,
    out: &mut ViewMut<f32>,
    input: DataType,
    read_out: bool,
    scale: f32,
    bands_allowed: bool,
) -> bool {
    let element = std::mem::size_of::<A>();
    assert_eq!(
        element,
        if input == DataType::F32 { 4 } else { 2 },
        "the element type is what `input` says"
    );
    let Ok(library) = library() else {
        return false;
    };
    let threads = rayon::current_num_threads();
    let banded = bands_allowed && library.runtime == "OpenMP" && threads > 1;
    // Bands of columns where the output is wide enough, else of rows where it is tall enough.
    let (bands, by_rows) = if banded && out.columns >= threads * MIN_BAND_COLUMNS {
        (threads, false)
    } else if banded && out.rows >= threads * MIN_BAND_ROWS {
        (threads, true)
    } else {
        (1, false)
    };
    let length = if by_rows { out.rows } else { out.columns };
    let band = |index: usize| {
        let first = length * index / bands;
        (first, length * (index + 1) / bands - first)
    };
    // Every band's primitive first, so that nothing is written unless all can run.
    let mut primitives = Vec::with_capacity(bands);
    for index in 0..bands {
        let count = band(index).1;
        let key = Key {
            rows: if by_rows { count } else { out.rows },
            inner: a.columns,
            columns: if by_rows { out.columns } else { count },
            strides: [
                a.row_stride,
                a.column_stride,
                b.row_stride,
                b.column_stride,
                out.row_stride,
                out.column_stride,
            ],
            input,
            read_out,
            scale: scale.to_bits(),
            band: if bands > 1 { index + 1 } else { 0 },
        };
        match library.primitive(key) {
            Some(primitive) => primitives.push(primitive),
            None => return false,
        }
    }
    // Addresses, so that the bands can cross threads.
    let (a_at, b_at, out_at) = (
        a.data.as_ptr() as usize,
        b.data.as_ptr() as usize,
        out.data.as_mut_ptr() as usize,
    );
    // How far one band's operands start from the previous one's, per row or column of it.
    let (a_step, b_step, out_step) = if by_rows {
        (a.row_stride * element, 0, out.row_stride * 4)
    } else {
        (0, b.column_stride * element, out.column_stride * 4)
    };
    let api = &library.api;
    let run = |index: usize| -> bool {
        let Ok(primitive) = primitives[index].lock() else {
            return false;
        };
        if let (Some(set_threads), "OpenMP") = (api.omp_set_num_threads, library.runtime) {
            // SAFETY: sets the calling thread's OpenMP thread count, nothing else.
            unsafe { set_threads(if bands > 1 { 1 } else { threads as c_int }) };
        }
        let first = band(index).0;
        let handles = [
            (a_at + first * a_step) as Handle,
            (b_at + first * b_step) as Handle,
            (out_at + first * out_step) as Handle,
        ];
        // SAFETY: the primitive was made for exactly this band's sizes and strides, which the
        // caller checked lie inside the slices (a band starts `first` columns or rows in); distinct
        // output elements do not overlap (checked by the caller), so the bands' outputs are
        // disjoint, and the output is an exclusive borrow held until every band is done, so
        // it aliases neither input; the memory objects are this entry's, used by one thread
        // at a time (its mutex).
        unsafe {
            for (memory, handle) in primitive.memories.iter().zip(handles) {
                if (api.memory_set_data_handle)(*memory, handle) != SUCCESS {
                    return false;
                }
            }
            let args = [
                ExecArg {
                    arg: ARG_SRC,
                    memory: primitive.memories[0],
                },
                ExecArg {
                    arg: ARG_WEIGHTS,
                    memory: primitive.memories[1],
                },
                ExecArg {
                    arg: ARG_DST,
                    memory: primitive.memories[2],
                },
            ];
            (api.primitive_execute)(primitive.primitive, primitive.stream, 3, args.as_ptr())
                == SUCCESS
                && (api.stream_wait)(primitive.stream) == SUCCESS
        }
    };
    let done = if bands == 1 {
        run(0)
    } else {
        use rayon::prelude::*;
        (0..bands)
            .into_par_iter()
            .map(run)
            .collect::<Vec<_>>()
            .into_iter()
            .all(|ok| ok)
    };
    // A primitive made for the shape does not fail to run on views that fit it.
    assert!(done, "a oneDNN matmul primitive failed to run");
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        /// Primitives this thread has made (the cache's test: other tests make theirs on
        /// other threads at the same time).
        pub(super) static CREATED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    /// oneDNN's products (where the library opens) against the textbook sum on odd sizes:
    /// f32 and bf16 inputs, a transposed operand, a strided output (its spare column kept),
    /// overwrite and accumulate with a scale, products cut into bands, and the primitives
    /// reused when a shape returns.
    #[test]
    fn onednn_products_match_the_sum_and_reuse_their_primitives() {
        if library().is_err() {
            eprintln!("oneDNN does not open here; skipped");
            return;
        };
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |t| t.subsec_nanos() as usize);
        // Wide products are cut into one band of columns per thread, tall narrow ones into
        // bands of rows: pools of 2 and 3 threads (uneven bands), 769 columns, 197 rows.
        let shapes = [
            (5, 7, 11),
            (17, 33, 3),
            (5, 7, 11),
            (1, 129, 65),
            (3, 19, 769),
            (3, 19, 769),
            (197, 21, 5),
        ];
        for threads in [2, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| check_shapes(&shapes, seed));
        }
    }

    fn check_shapes(shapes: &[(usize, usize, usize)], seed: usize) {
        for (round, &(rows, inner, columns)) in shapes.iter().enumerate() {
            let stride = columns + 2;
            let value =
                |i: usize, salt: usize| ((i * 37 + salt * 101 + seed) % 97) as f32 / 48.5 - 1.0;
            let a: Vec<f32> = (0..rows * inner).map(|i| value(i, 1)).collect();
            // b stored transposed (columns x inner).
            let b: Vec<f32> = (0..columns * inner).map(|i| value(i, 2)).collect();
            let (a16, b16): (Vec<half::bf16>, Vec<half::bf16>) = (
                a.iter().map(|&v| half::bf16::from_f32(v)).collect(),
                b.iter().map(|&v| half::bf16::from_f32(v)).collect(),
            );
            let sum = |r: usize, c: usize, bf16: bool| -> f32 {
                (0..inner)
                    .map(|k| {
                        if bf16 {
                            a16[r * inner + k].to_f32() * b16[c * inner + k].to_f32()
                        } else {
                            a[r * inner + k] * b[c * inner + k]
                        }
                    })
                    .sum()
            };
            for bf16 in [false, true] {
                for (read_out, scale) in [(false, 1.0), (true, 1.0), (true, -2.0)] {
                    let before = CREATED.with(|created| created.get());
                    let mut out = vec![0.5f32; rows * stride];
                    let mut target = ViewMut::strided(&mut out, rows, columns, stride, 1);
                    let done = if bf16 {
                        multiply(
                            &View::row_major(&a16, rows, inner),
                            &View::row_major(&b16, columns, inner).transposed(),
                            &mut target,
                            DataType::Bf16,
                            read_out,
                            scale,
                        )
                    } else {
                        multiply(
                            &View::row_major(&a, rows, inner),
                            &View::row_major(&b, columns, inner).transposed(),
                            &mut target,
                            DataType::F32,
                            read_out,
                            scale,
                        )
                    };
                    assert!(done, "{rows}x{inner}x{columns} bf16 {bf16}: no primitive");
                    if round == 2 || round == 5 {
                        let after = CREATED.with(|created| created.get());
                        assert_eq!(after, before, "the shape's primitives are kept");
                    }
                    for r in 0..rows {
                        for c in 0..columns {
                            let expected =
                                if read_out { 0.5 } else { 0.0 } + scale * sum(r, c, bf16);
                            let got = out[r * stride + c];
                            assert!(
                                (got - expected).abs() <= 1e-4 * (1.0 + expected.abs()),
                                "{rows}x{inner}x{columns} bf16 {bf16} {read_out} {scale}: \
                                 ({r}, {c}) {got} against {expected}"
                            );
                        }
                        assert!(out[r * stride + columns..(r + 1) * stride]
                            .iter()
                            .all(|&v| v == 0.5));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod timing {
    use super::*;

    /// The llava-next-7b forward's products, gemm against oneDNN f32 and bf16, interleaved,
    /// best of `METACOMPRESS_TIMING_ROUNDS` (run by hand: `cargo test --release --lib
    /// onednn_rates -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn onednn_rates() {
        let library = library().unwrap();
        eprintln!(
            "oneDNN {} {} {} threads",
            library.version,
            library.isa,
            library.threads()
        );
        let rounds: usize = std::env::var("METACOMPRESS_TIMING_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(5);
        // (rows, inner, columns, a stored transposed, b stored transposed, what)
        let shapes = [
            (289, 2928, 4096, false, false, "Y = P X"),
            (4096, 2928, 289, true, true, "Y^T = X^T P^T"),
            (2928, 4096, 256, false, false, "K = X w_k"),
            (256, 4096, 2928, false, true, "K^T = w_k^T X^T"),
            (289, 256, 2928, false, false, "S = Q K^T (K^T stored)"),
            (289, 256, 2928, false, true, "S = Q K^T (K stored)"),
            (289, 4096, 256, false, false, "Q = pool(X) w_q"),
        ];
        for (rows, inner, columns, a_t, b_t, what) in shapes {
            let a = vec![0.01f32; rows * inner];
            let b = vec![0.02f32; inner * columns];
            let a16 = vec![half::bf16::from_f32(0.01); rows * inner];
            let b16 = vec![half::bf16::from_f32(0.02); inner * columns];
            let mut out = vec![0.0f32; rows * columns];
            let mut best = [f64::INFINITY; 5];
            for _ in 0..rounds {
                for (engine, best) in best.iter_mut().enumerate() {
                    let av = if a_t {
                        View::row_major(&a, inner, rows).transposed()
                    } else {
                        View::row_major(&a, rows, inner)
                    };
                    let bv = if b_t {
                        View::row_major(&b, columns, inner).transposed()
                    } else {
                        View::row_major(&b, inner, columns)
                    };
                    let av16 = if a_t {
                        View::row_major(&a16, inner, rows).transposed()
                    } else {
                        View::row_major(&a16, rows, inner)
                    };
                    let bv16 = if b_t {
                        View::row_major(&b16, columns, inner).transposed()
                    } else {
                        View::row_major(&b16, inner, columns)
                    };
                    let started = std::time::Instant::now();
                    match engine {
                        0 => {
                            let threads = rayon::current_num_threads();
                            let bands = if rows <= super::super::SKINNY_ROWS
                                && columns >= threads * super::super::MIN_BAND_COLUMNS
                            {
                                threads
                            } else {
                                1
                            };
                            let mut o = ViewMut::row_major(&mut out, rows, columns);
                            super::super::multiply_in_bands(&av, &bv, &mut o, false, 1.0, bands);
                        }
                        1 => {
                            let mut o = ViewMut::row_major(&mut out, rows, columns);
                            assert!(multiply(&av, &bv, &mut o, DataType::F32, false, 1.0));
                        }
                        2 => {
                            let mut o = ViewMut::row_major(&mut out, rows, columns);
                            assert!(multiply(&av16, &bv16, &mut o, DataType::Bf16, false, 1.0));
                        }
                        3 => {
                            let mut o = ViewMut::row_major(&mut out, rows, columns);
                            assert!(multiply_on(
                                &av,
                                &bv,
                                &mut o,
                                DataType::F32,
                                false,
                                1.0,
                                false
                            ));
                        }
                        _ => {
                            let mut o = ViewMut::row_major(&mut out, rows, columns);
                            assert!(multiply_on(
                                &av16,
                                &bv16,
                                &mut o,
                                DataType::Bf16,
                                false,
                                1.0,
                                false
                            ));
                        }
                    }
                    *best = best.min(started.elapsed().as_secs_f64());
                }
            }
            let rate = |seconds: f64| 2.0 * (rows * inner * columns) as f64 / seconds / 1e9;
            eprintln!(
                "{what:<24} {rows}x{inner}x{columns}: gemm f32 {:.0}, oneDNN f32 {:.0} \
                 (unbanded {:.0}), oneDNN bf16 {:.0} (unbanded {:.0}) GFLOP/s",
                rate(best[0]),
                rate(best[1]),
                rate(best[3]),
                rate(best[2]),
                rate(best[4])
            );
        }
    }
}

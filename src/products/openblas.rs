//! The products through the system's OpenBLAS (CBLAS), for the `openblas` feature: two
//! CBLAS prototypes declared here (no binding crate for two functions), and the views said
//! in CBLAS's row-major terms where their strides allow.

use crate::products::{Element, View, ViewMut};
use std::any::TypeId;
use std::os::raw::c_int;

const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;

/// `cblas_sgemm` or `cblas_dgemm`.
type Gemm<E> = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    E,
    *const E,
    c_int,
    *const E,
    c_int,
    E,
    *mut E,
    c_int,
);

#[link(name = "openblas")]
extern "C" {
    fn cblas_sgemm(
        order: c_int,
        trans_a: c_int,
        trans_b: c_int,
        m: c_int,
        n: c_int,
        k: c_int,
        alpha: f32,
        a: *const f32,
        lda: c_int,
        b: *const f32,
        ldb: c_int,
        beta: f32,
        c: *mut f32,
        ldc: c_int,
    );
    fn cblas_dgemm(
        order: c_int,
        trans_a: c_int,
        trans_b: c_int,
        m: c_int,
        n: c_int,
        k: c_int,
        alpha: f64,
        a: *const f64,
        lda: c_int,
        b: *const f64,
        ldb: c_int,
        beta: f64,
        c: *mut f64,
        ldc: c_int,
    );
    fn openblas_set_num_threads(threads: c_int);
}

/// A row-major CBLAS operand for a view: (transpose flag, leading dimension), if its
/// strides can be said so.
fn operand<T>(view: &View<T>) -> Option<(c_int, c_int)> {
    let fits = |v: usize| c_int::try_from(v).ok();
    if view.column_stride == 1 && view.row_stride >= view.columns.max(1) {
        Some((NO_TRANS, fits(view.row_stride)?))
    } else if view.row_stride == 1 && view.column_stride >= view.rows.max(1) {
        Some((TRANS, fits(view.column_stride)?))
    } else {
        None
    }
}

/// `out (+)= scale a b` through CBLAS; `false` (nothing done) when a stride or size has no
/// CBLAS form, for the caller to compute otherwise.
pub(super) fn multiply<T: Element>(
    a: &View<T>,
    b: &View<T>,
    out: &mut ViewMut<T>,
    read_out: bool,
    scale: T,
) -> bool {
    if out.column_stride != 1 || out.row_stride < out.columns {
        return false;
    }
    let (Some((trans_a, lda)), Some((trans_b, ldb))) = (operand(a), operand(b)) else {
        return false;
    };
    let sizes = (
        c_int::try_from(out.rows),
        c_int::try_from(out.columns),
        c_int::try_from(a.columns),
        c_int::try_from(out.row_stride),
    );
    let (Ok(m), Ok(n), Ok(k), Ok(ldc)) = sizes else {
        return false;
    };
    static THREADS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let threads = rayon::current_num_threads();
    if THREADS.swap(threads, std::sync::atomic::Ordering::Relaxed) != threads {
        // SAFETY: a plain setter of the library's thread count.
        unsafe { openblas_set_num_threads(threads as c_int) };
    }
    // SAFETY: the caller checked that every element each view addresses lies in its slice
    // and that the output's elements do not overlap; the operand forms above describe
    // exactly those elements to CBLAS (leading dimensions at least the row lengths), and
    // `cast` reinterprets only between a type and itself (checked by `TypeId`).
    unsafe {
        fn cast<T: 'static, U: 'static>(pointer: *const T) -> Option<*const U> {
            (TypeId::of::<T>() == TypeId::of::<U>()).then_some(pointer as *const U)
        }
        /// One CBLAS call of either type: `scalars` is `[alpha, beta]`.
        unsafe fn call<E: Copy>(
            gemm: Gemm<E>,
            shape: [c_int; 8],
            scalars: *const E,
            operands: (*const E, *const E, *mut E),
        ) {
            let [trans_a, trans_b, m, n, k, lda, ldb, ldc] = shape;
            let (a, b, out) = operands;
            gemm(
                ROW_MAJOR,
                trans_a,
                trans_b,
                m,
                n,
                k,
                *scalars,
                a,
                lda,
                b,
                ldb,
                *scalars.add(1),
                out,
                ldc,
            );
        }
        let shape = [trans_a, trans_b, m, n, k, lda, ldb, ldc];
        let scalars = [scale, if read_out { T::ONE } else { T::ZERO }];
        let (a, b, out) = (a.data.as_ptr(), b.data.as_ptr(), out.data.as_mut_ptr());
        if let Some(s) = cast::<T, f32>(scalars.as_ptr()) {
            call(cblas_sgemm, shape, s, (a as _, b as _, out as _));
        } else if let Some(s) = cast::<T, f64>(scalars.as_ptr()) {
            call(cblas_dgemm, shape, s, (a as _, b as _, out as _));
        } else {
            return false;
        }
    }
    true
}

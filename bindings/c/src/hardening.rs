//! The C calls under hostile use (issue 34): an extra set is named in its messages
//! (`extra[1].d`, `extra[1].tokens[...]`), never as the main tokens; a misaligned
//! `mc_call_params.attention` is a usage error; `mc_open` sets an unset or empty
//! `XDG_RUNTIME_DIR` (Mesa's warning would reach the application's stderr).

use std::ffi::CStr;
use std::ptr::{null, null_mut};

use crate::calls::{mc_close, mc_compress, mc_compress_sharing, mc_last_error, mc_open};
use crate::params::{mc_call_params_default, mc_open_params_default, mc_token_set, DtypeCode};
use crate::status::mc_status;

/// A compressor on the CPU path.
fn open() -> *mut crate::calls::mc_compressor {
    let mut params = mc_open_params_default();
    params.backend = c"cpu".as_ptr();
    let mut compressor = null_mut();
    // SAFETY: valid pointers.
    let status = unsafe { mc_open(null(), &params, &mut compressor) };
    assert_eq!(status, mc_status::MC_OK, "{}", last_error());
    compressor
}

fn last_error() -> String {
    // SAFETY: never NULL, NUL-terminated.
    unsafe { CStr::from_ptr(mc_last_error()) }
        .to_string_lossy()
        .into_owned()
}

/// `mc_compress_sharing` of 36 x 8 tokens with `sets` (pool, keep 0.25).
fn sharing(
    compressor: *mut crate::calls::mc_compressor,
    tokens: &[f32],
    sets: &[mc_token_set],
) -> mc_status {
    let mut params = mc_call_params_default();
    params.method = c"pool".as_ptr();
    params.keep = 0.25;
    let mut out = vec![0.0f32; 36 * 8];
    // SAFETY: every pointer valid for the sizes given.
    unsafe {
        mc_compress_sharing(
            compressor,
            tokens.as_ptr().cast(),
            DtypeCode(0),
            1,
            36,
            8,
            &params,
            sets.as_ptr(),
            sets.len(),
            out.as_mut_ptr(),
            out.len(),
            null_mut(),
        )
    }
}

#[test]
fn an_extra_set_is_named_in_its_messages() {
    let compressor = open();
    let tokens = vec![1.0f32; 36 * 8];
    let mut bad = vec![1.0f32; 36 * 5];
    bad[2 * 5 + 3] = f32::NAN;
    let mut outs = vec![vec![0.0f32; 36 * 8]; 2];
    let set = |values: &[f32], d: usize, out: &mut Vec<f32>| mc_token_set {
        tokens: values.as_ptr().cast(),
        dtype: DtypeCode(0),
        d,
        out: out.as_mut_ptr(),
        out_len: out.len(),
    };
    let (first, second) = outs.split_at_mut(1);
    let sets = [set(&tokens, 0, &mut first[0]), set(&bad, 5, &mut second[0])];
    assert_eq!(sharing(compressor, &tokens, &sets), mc_status::MC_USAGE);
    let line = last_error();
    assert!(line.contains("extra[0].d = 0"), "{line}");
    let sets = [set(&tokens, 8, &mut first[0]), set(&bad, 5, &mut second[0])];
    assert_eq!(sharing(compressor, &tokens, &sets), mc_status::MC_ERROR);
    assert_eq!(
        last_error(),
        "extra[1].tokens[0, 2, 3] is NaN; expected finite values"
    );
    // SAFETY: open, closed once.
    unsafe { mc_close(compressor) };
}

#[test]
fn a_misaligned_attention_is_a_usage_error() {
    let compressor = open();
    let tokens = vec![1.0f32; 36 * 8];
    let attention = [1.0f32; 37];
    let mut params = mc_call_params_default();
    params.method = c"visionzip".as_ptr();
    params.keep = 0.25;
    // One byte in: not aligned to a float.
    params.attention = attention.as_ptr().cast::<u8>().wrapping_add(1).cast();
    let mut out = vec![0.0f32; 36 * 8];
    // SAFETY: every pointer valid for the sizes given (the attention's alignment is the test).
    let status = unsafe {
        mc_compress(
            compressor,
            tokens.as_ptr().cast(),
            DtypeCode(0),
            1,
            36,
            8,
            &params,
            out.as_mut_ptr(),
            out.len(),
            null_mut(),
        )
    };
    assert_eq!(status, mc_status::MC_USAGE);
    assert!(
        last_error().contains("attention is not aligned"),
        "{}",
        last_error()
    );
    // SAFETY: open, closed once.
    unsafe { mc_close(compressor) };
}

#[test]
fn mc_open_sets_an_empty_xdg_runtime_dir() {
    std::env::set_var("XDG_RUNTIME_DIR", "");
    let compressor = open();
    assert!(std::env::var_os("XDG_RUNTIME_DIR").is_some_and(|dir| !dir.is_empty()));
    // SAFETY: open, closed once.
    unsafe { mc_close(compressor) };
}

//! The C API's parameter types, as the header declares them, and their defaults.

use std::ffi::{c_char, c_void};

/// The element type of the tokens `mc_compress` reads (the output is always f32).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum mc_dtype {
    /// 32-bit floats.
    MC_F32 = 0,
    /// IEEE half floats.
    MC_F16 = 1,
    /// bfloat16.
    MC_BF16 = 2,
}

/// An `mc_dtype` as the caller passed it: a C enum may hold any integer, so it is read as one
/// and checked (the header names it `mc_dtype`).
#[repr(transparent)]
#[derive(Clone, Copy, Debug)]
pub struct DtypeCode(pub(crate) u32);

/// One grid of an image's tokens: `height x width` tokens from token `offset`, rows `stride`
/// tokens apart (`stride` 0: `width`, contiguous rows). Tokens in no grid are loose.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct mc_grid {
    /// The token of the grid's top-left cell.
    pub offset: u64,
    /// Rows.
    pub height: u64,
    /// Columns.
    pub width: u64,
    /// Tokens from one row's start to the next's; 0 for `width`.
    pub stride: u64,
}

/// How `mc_open` opens a compressor; `mc_open_params_default()` gives the defaults, and a
/// NULL string field means its default too.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct mc_open_params {
    /// `auto`, `vulkan`, `metal`, `dx12`, `gl`, `cpu` or `reference` (as the CLI's
    /// `--backend`).
    pub backend: *const c_char,
    /// `f32`, `f16`, `f16-acc` or `bf16` (as `--precision`).
    pub precision: *const c_char,
    /// A GPU adapter whose name contains this; NULL for any.
    pub adapter: *const c_char,
    /// Threads of the CPU path: 0 for all cores (rayon's global pool), else 1 to 1024 (a pool
    /// of the compressor's own).
    pub threads: u32,
}

/// One call's options; `mc_call_params_default()` gives the defaults, and a NULL string
/// field means its default too.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct mc_call_params {
    /// Keep fraction `k` in (0, 1].
    pub keep: f64,
    /// Softmax scope of `metacompress`: `image` or `grid`.
    pub scope: *const c_char,
    /// `metacompress` (needs weights), `pool`, `sample`, `random`, `tome`, `divprune`,
    /// `visionzip` or `prumerge` (these two need `attention`).
    pub method: *const c_char,
    /// Seed of `random`'s draws.
    pub seed: u64,
    /// The grids of each image's `n` tokens; NULL (with `n_grids` 0) for one square grid.
    pub grids: *const mc_grid,
    /// Entries of `grids`.
    pub n_grids: usize,
    /// The vision tower's [CLS] attention over the tokens, `batch x n` floats; NULL unless
    /// the method reads it.
    pub attention: *const f32,
}

/// One more set of tokens of the same images, reduced with the main tokens' `P`
/// (`mc_compress_sharing`): `batch x n x d` values of `dtype` at `tokens`, reduced to
/// `batch x m x d` floats written to `out` (room for `out_len`). Qwen3-VL's deepstack
/// features are such sets.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct mc_token_set {
    /// The set's tokens, row-major, aligned to their type.
    pub tokens: *const c_void,
    /// Their type.
    pub dtype: DtypeCode,
    /// Their width (any; the main tokens' `d` need not match).
    pub d: usize,
    /// Where the reduced tokens go.
    pub out: *mut f32,
    /// Room at `out`, in floats.
    pub out_len: usize,
}

/// The defaults of `mc_open`: backend `auto`, precision `f32`, any adapter, all cores.
#[no_mangle]
pub extern "C" fn mc_open_params_default() -> mc_open_params {
    mc_open_params {
        backend: c"auto".as_ptr(),
        precision: c"f32".as_ptr(),
        adapter: std::ptr::null(),
        threads: 0,
    }
}

/// The defaults of a call: keep 0.1, scope `image`, method `metacompress`, seed 0, one square
/// grid, no attention.
#[no_mangle]
pub extern "C" fn mc_call_params_default() -> mc_call_params {
    mc_call_params {
        keep: 0.1,
        scope: c"image".as_ptr(),
        method: c"metacompress".as_ptr(),
        seed: 0,
        grids: std::ptr::null(),
        n_grids: 0,
        attention: std::ptr::null(),
    }
}

//! The C API of metacompress (SPEC section 9): `libmetacompress.so` / `libmetacompress.a` and
//! `include/metacompress.h`, generated from this file by cbindgen (`tests/header.rs` fails
//! when the committed header is stale; `METACOMPRESS_BLESS=1` rewrites it).
//!
//! A door, not a room of its own: each function turns its C arguments into the library's types
//! (checking every pointer and size first), calls `Runner` (`Compressor` for `metacompress`,
//! the other methods' reducer), and turns `Error` into a status (`Error::is_usage`: MC_USAGE,
//! else MC_ERROR) and the command line's one line (`Error::line`) in `mc_last_error()`. No
//! panic crosses the boundary; the only state besides the compressors is that line, per thread.

// The C names are the API's names.
#![allow(non_camel_case_types)]

use std::cell::RefCell;
use std::ffi::{c_char, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::ptr::null_mut;

use clap::ValueEnum;
use library::methods::{Method, Request, Runner};
use library::{
    files, parse_pinpoints, Backend, Error, Grid, HostTokens, HostValues, Keep, Layout, Options,
    Precision, Queries, Result, Scope, MAX_THREADS,
};

/// What a call did: `MC_OK`, or why not. `mc_last_error()` holds the line of a failure.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum mc_status {
    /// The call did what it says.
    MC_OK = 0,
    /// A failure: a file, a device, non-finite values, a result out of range.
    MC_ERROR = 1,
    /// A usage error: an argument out of its range (a NULL pointer, a size, a name, a layout
    /// that does not fit the tokens, an `out_len` too small).
    MC_USAGE = 2,
}

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
pub struct DtypeCode(u32);

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

/// A compressor: weights (if any) on a backend, ready for any number of calls, from any
/// number of threads at once. Opaque; made by `mc_open`, freed by `mc_close`.
pub struct mc_compressor {
    runner: Runner,
    /// `mc_device`'s answer, alive as long as the compressor.
    device: CString,
    /// The CPU path's own threads, when `mc_open_params.threads` asked for a number.
    pool: Option<rayon::ThreadPool>,
}

// Several threads may call one compressor at once (SPEC section 9).
const _: fn() = || {
    fn shared<T: Send + Sync>() {}
    shared::<mc_compressor>();
};

impl mc_compressor {
    /// Runs `work` on the compressor's threads (rayon's global pool without a pool).
    fn install<R: Send>(&self, work: impl FnOnce() -> R + Send) -> R {
        match &self.pool {
            Some(pool) => pool.install(work),
            None => work(),
        }
    }
}

/// Most tokens per image (2^26, far past any model): a layout keeps 4 bytes per token, and
/// `mc_reduced_count` has no buffer whose size bounds `n`, so a wild `n` must not become a
/// wild allocation.
const MAX_TOKENS: usize = 1 << 26;

thread_local! {
    /// This thread's last error line.
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Remembers `line` as this thread's last error.
fn remember(line: &str) {
    let line = CString::new(line.replace('\0', "\\0")).unwrap_or_default();
    let _ = LAST_ERROR.try_with(|last| *last.borrow_mut() = line);
}

/// Runs one API call's body: its error as a status and a line, a panic as `MC_ERROR`.
fn guard(body: impl FnOnce() -> Result<()>) -> mc_status {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => mc_status::MC_OK,
        Ok(Err(error)) => {
            remember(&error.line());
            match error.is_usage() {
                true => mc_status::MC_USAGE,
                false => mc_status::MC_ERROR,
            }
        }
        Err(panic) => {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            remember(&library::one_line(&format!(
                "internal error (a bug in metacompress): {why}"
            )));
            mc_status::MC_ERROR
        }
    }
}

/// A usage error of the C layer's own checks.
fn usage(line: String) -> Error {
    Error::InvalidArgument(line)
}

/// `pointer` as a reference, or a usage error naming it.
///
/// # Safety
/// `pointer` is NULL or points to a valid `T`.
unsafe fn required<'a, T>(pointer: *const T, function: &str, name: &str) -> Result<&'a T> {
    // SAFETY: the caller's promise; NULL is refused.
    unsafe { pointer.as_ref() }
        .ok_or_else(|| usage(format!("{function}: {name} is NULL; expected a pointer")))
}

/// An output pointer, or a usage error naming it.
fn output<T>(pointer: *mut T, function: &str, name: &str) -> Result<*mut T> {
    match pointer.is_null() {
        true => Err(usage(format!(
            "{function}: {name} is NULL; expected a pointer to write to"
        ))),
        false => Ok(pointer),
    }
}

/// A C string (`None` for NULL), or a usage error when it is not UTF-8.
///
/// # Safety
/// `pointer` is NULL or a NUL-terminated string.
unsafe fn text<'a>(pointer: *const c_char, name: &str) -> Result<Option<&'a str>> {
    if pointer.is_null() {
        return Ok(None);
    }
    // SAFETY: the caller's promise of a NUL-terminated string.
    let bytes = unsafe { CStr::from_ptr(pointer) };
    bytes
        .to_str()
        .map(Some)
        .map_err(|_| usage(format!("{name} is not UTF-8 text")))
}

/// A file's path (`None` for NULL): any bytes on Unix, UTF-8 elsewhere.
///
/// # Safety
/// `pointer` is NULL or a NUL-terminated string.
unsafe fn path<'a>(pointer: *const c_char, name: &str) -> Result<Option<&'a Path>> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        // Any bytes name a file on Unix: nothing to refuse.
        let _ = name;
        // SAFETY: the caller's promise of a NUL-terminated string.
        Ok((!pointer.is_null()).then(|| {
            Path::new(std::ffi::OsStr::from_bytes(
                unsafe { CStr::from_ptr(pointer) }.to_bytes(),
            ))
        }))
    }
    #[cfg(not(unix))]
    {
        // SAFETY: the caller's promise.
        Ok(unsafe { text(pointer, name)? }.map(Path::new))
    }
}

/// One of a `ValueEnum`'s names (as the command line spells them), or a usage error listing
/// them.
fn named<T: ValueEnum>(name: &str, value: &str) -> Result<T> {
    T::from_str(value, false).map_err(|_| {
        let names: Vec<String> = T::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value())
            .map(|v| v.get_name().to_string())
            .collect();
        usage(format!(
            "{name} {value:?} is not one of {}; expected one of these names",
            names.join(", ")
        ))
    })
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

/// Opens a compressor: P_meta weights from the safetensors file `weights_path` (NULL: none;
/// then only the other methods run) on the backend `params` names (NULL: the defaults), and
/// stores it in `*out` (NULL on failure). Close it with `mc_close`.
///
/// # Safety
/// Every pointer is NULL or valid: strings NUL-terminated, `params` an `mc_open_params`,
/// `out` writable.
#[no_mangle]
pub unsafe extern "C" fn mc_open(
    weights_path: *const c_char,
    params: *const mc_open_params,
    out: *mut *mut mc_compressor,
) -> mc_status {
    guard(|| {
        let out = output(out, "mc_open", "out")?;
        // SAFETY: checked non-NULL; the caller's promise of a writable pointer.
        unsafe { *out = null_mut() };
        // SAFETY: NULL or an `mc_open_params`, by the caller's promise.
        let params = match unsafe { params.as_ref() } {
            Some(params) => *params,
            None => mc_open_params_default(),
        };
        // SAFETY: NULL or NUL-terminated strings, by the caller's promise.
        let (backend, precision, adapter, weights_path) = unsafe {
            (
                text(params.backend, "mc_open_params.backend")?,
                text(params.precision, "mc_open_params.precision")?,
                text(params.adapter, "mc_open_params.adapter")?,
                path(weights_path, "mc_open: weights_path")?,
            )
        };
        let backend: Backend = named("mc_open_params.backend", backend.unwrap_or("auto"))?;
        let precision: Precision = named("mc_open_params.precision", precision.unwrap_or("f32"))?;
        let requested = match params.threads {
            0 => None,
            threads if threads as usize > MAX_THREADS => {
                return Err(usage(format!(
                    "mc_open_params.threads = {threads} is out of range; expected 0 (all cores) \
                     to {MAX_THREADS}"
                )))
            }
            threads => Some(threads as usize),
        };
        // 0: RAYON_NUM_THREADS if set (bounded as the CLI bounds it), else every core.
        let pool = match library::threads_from(requested)? {
            None => None,
            Some(threads) => Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .map_err(|e| Error::Unsupported(format!("{threads} threads: {e}")))?,
            ),
        };
        let weights = weights_path.map(files::read_weights).transpose()?;
        let open = || -> Result<(Runner, String)> {
            let runner = Runner::new(weights, backend, adapter, precision)?;
            let device = runner.device();
            Ok((runner, device))
        };
        // The CPU path's description counts the threads of the pool it runs on.
        let (runner, device) = match &pool {
            Some(pool) => pool.install(open)?,
            None => open()?,
        };
        let compressor = mc_compressor {
            runner,
            device: CString::new(device.replace('\0', " ")).unwrap_or_default(),
            pool,
        };
        // SAFETY: checked non-NULL above.
        unsafe { *out = Box::into_raw(Box::new(compressor)) };
        Ok(())
    })
}

/// What runs the compressor's passes, for people (the adapter and API, or the CPU path and
/// its threads); valid until `mc_close`. NULL (and the line) when `compressor` is NULL.
///
/// # Safety
/// `compressor` is NULL or from `mc_open` and not closed.
#[no_mangle]
pub unsafe extern "C" fn mc_device(compressor: *const mc_compressor) -> *const c_char {
    let mut device = std::ptr::null();
    guard(|| {
        // SAFETY: the caller's promise.
        let compressor = unsafe { required(compressor, "mc_device", "compressor")? };
        device = compressor.device.as_ptr();
        Ok(())
    });
    device
}

/// A call's arguments in the library's types.
struct Call {
    layout: Layout,
    options: Options,
    method: Method,
    seed: u64,
    attention: *const f32,
}

impl Call {
    /// Reads `params` (NULL: the defaults) for images of `n` tokens; `function` names the
    /// caller in the lines of errors.
    ///
    /// # Safety
    /// `params` is NULL or an `mc_call_params` whose strings and grids are valid.
    unsafe fn read(params: *const mc_call_params, n: usize, function: &str) -> Result<Call> {
        // SAFETY: the caller's promise.
        let params = match unsafe { params.as_ref() } {
            Some(params) => *params,
            None => mc_call_params_default(),
        };
        // SAFETY: the caller's promise of NUL-terminated strings.
        let (scope, method) = unsafe {
            (
                text(params.scope, "mc_call_params.scope")?,
                text(params.method, "mc_call_params.method")?,
            )
        };
        let scope: Scope = named("mc_call_params.scope", scope.unwrap_or("image"))?;
        let method: Method = named("mc_call_params.method", method.unwrap_or("metacompress"))?;
        let keep = Keep::new(params.keep)?;
        if n == 0 || n > MAX_TOKENS {
            return Err(usage(format!(
                "{function}: n = {n} tokens is out of range; expected 1 to {MAX_TOKENS}"
            )));
        }
        let layout = match (params.grids.is_null(), params.n_grids) {
            (true, 0) => Layout::square(n)?,
            (true, count) => {
                return Err(usage(format!(
                    "mc_call_params.grids is NULL but n_grids = {count}; expected grids to \
                     point to {count} mc_grid entries (or n_grids = 0 for one square grid)"
                )))
            }
            (false, 0) => {
                return Err(usage(
                    "mc_call_params.n_grids = 0 with a grids pointer; expected the number of \
                     entries (or grids = NULL for one square grid)"
                        .to_string(),
                ))
            }
            (false, count) if count > n => {
                return Err(usage(format!(
                    "mc_call_params.n_grids = {count} is more than the n = {n} tokens; \
                     expected at most one grid per token"
                )))
            }
            (false, count) => {
                // SAFETY: the caller's promise of `count` entries; `count <= n` keeps the
                // slice's size far below isize::MAX.
                let entries = unsafe { std::slice::from_raw_parts(params.grids, count) };
                let grids = entries
                    .iter()
                    .enumerate()
                    .map(|(index, entry)| grid(index, entry))
                    .collect::<Result<Vec<Grid>>>()?;
                Layout::new(n, grids)?
            }
        };
        Ok(Call {
            layout,
            options: Options {
                keep,
                scope,
                ..Options::default()
            },
            method,
            seed: params.seed,
            attention: params.attention,
        })
    }

    /// The query grids of each image (the same for every method).
    fn queries(&self) -> Queries {
        self.layout.queries(self.options.keep)
    }
}

/// An `mc_grid` as the library's grid.
fn grid(index: usize, entry: &mc_grid) -> Result<Grid> {
    let size = |value: u64, field: &str| {
        usize::try_from(value).map_err(|_| {
            usage(format!(
                "mc_call_params.grids[{index}].{field} = {value} is out of this machine's range"
            ))
        })
    };
    let width = size(entry.width, "width")?;
    let stride = match entry.stride {
        0 => width,
        stride => size(stride, "stride")?,
    };
    Ok(Grid::strided(
        size(entry.offset, "offset")?,
        size(entry.height, "height")?,
        width,
        stride,
    ))
}

/// The number `m` of reduced tokens per image of `n` tokens under `params` (NULL: the
/// defaults), in `*m`, and when `query_shapes` is not NULL, the height and width of each
/// grid's query grid in it (2 per grid: `n_grids`, or 1 without grids), in order: the
/// positions of the reduced tokens (Qwen2-VL's M-RoPE reads them). Checks the layout as
/// `mc_compress` will.
///
/// # Safety
/// `compressor` is NULL or open; `params` NULL or valid; `m` writable; `query_shapes` NULL
/// or room for 2 per grid.
#[no_mangle]
pub unsafe extern "C" fn mc_reduced_count(
    compressor: *const mc_compressor,
    n: usize,
    params: *const mc_call_params,
    m: *mut usize,
    query_shapes: *mut u32,
) -> mc_status {
    guard(|| {
        // SAFETY: the caller's promises.
        unsafe { required(compressor, "mc_reduced_count", "compressor")? };
        let m = output(m, "mc_reduced_count", "m")?;
        // SAFETY: the caller's promise.
        let call = unsafe { Call::read(params, n, "mc_reduced_count")? };
        let queries = call.queries();
        let mut shapes = Vec::with_capacity(2 * queries.grids.len());
        for query_grid in &queries.grids {
            for side in [query_grid.height, query_grid.width] {
                shapes.push(u32::try_from(side).map_err(|_| {
                    usage(format!(
                        "mc_reduced_count: a query grid side of {side} does not fit uint32_t"
                    ))
                })?);
            }
        }
        // SAFETY: checked non-NULL; writable by the caller's promise.
        unsafe { *m = queries.count };
        if !query_shapes.is_null() {
            // SAFETY: the caller's promise of room for 2 per grid.
            unsafe { std::ptr::copy_nonoverlapping(shapes.as_ptr(), query_shapes, shapes.len()) };
        }
        Ok(())
    })
}

/// `count` values of `dtype` at `tokens`, checked: not NULL, a known dtype, aligned to it,
/// `batch x n x d` within memory. `function` and `what` name them in errors.
///
/// # Safety
/// `tokens` is NULL or holds `batch * n * d` values of `dtype`.
unsafe fn host_values<'a>(
    tokens: *const c_void,
    dtype: DtypeCode,
    (batch, n, d): (usize, usize, usize),
    function: &str,
    what: &str,
) -> Result<HostValues<'a>> {
    if tokens.is_null() {
        return Err(usage(format!(
            "{function}: {what} is NULL; expected a pointer"
        )));
    }
    let dtype = match dtype.0 {
        0 => mc_dtype::MC_F32,
        1 => mc_dtype::MC_F16,
        2 => mc_dtype::MC_BF16,
        other => {
            return Err(usage(format!(
                "{function}: {what} dtype = {other} is not an mc_dtype; expected MC_F32 \
                 (0), MC_F16 (1) or MC_BF16 (2)"
            )))
        }
    };
    if batch == 0 || d == 0 {
        return Err(usage(format!(
            "{function}: batch = {batch}, d = {d}; expected both at least 1"
        )));
    }
    let size = match dtype {
        mc_dtype::MC_F32 => 4,
        mc_dtype::MC_F16 | mc_dtype::MC_BF16 => 2,
    };
    let count = batch
        .checked_mul(n)
        .and_then(|v| v.checked_mul(d))
        .filter(|count| {
            count
                .checked_mul(size)
                .is_some_and(|b| b <= isize::MAX as usize)
        })
        .ok_or_else(|| {
            usage(format!(
                "{function}: batch x n x d = {batch} x {n} x {d} values is more than memory \
                 can hold"
            ))
        })?;
    if !(tokens as usize).is_multiple_of(size) {
        return Err(usage(format!(
            "{function}: {what} is not aligned to its type's {size} bytes"
        )));
    }
    // SAFETY: the caller's promise of `count` values of `dtype` (size and alignment checked).
    Ok(unsafe {
        match dtype {
            mc_dtype::MC_F32 => HostValues::F32(std::slice::from_raw_parts(tokens.cast(), count)),
            mc_dtype::MC_F16 => HostValues::F16(std::slice::from_raw_parts(tokens.cast(), count)),
            mc_dtype::MC_BF16 => HostValues::BF16(std::slice::from_raw_parts(tokens.cast(), count)),
        }
    })
}

/// Room for `batch x m x d` floats at `out` (`out_len` of them), checked.
fn room(
    function: &str,
    what: &str,
    out_len: usize,
    (batch, m, d): (usize, usize, usize),
) -> Result<usize> {
    let needed = batch
        .checked_mul(m)
        .and_then(|v| v.checked_mul(d))
        .ok_or_else(|| {
            usage(format!(
                "{function}: batch x m x d = {batch} x {m} x {d} overflows"
            ))
        })?;
    if out_len < needed {
        return Err(usage(format!(
            "{function}: {what} = {out_len} floats is too small; the call writes batch x m x d \
             = {batch} x {m} x {d} = {needed} (mc_reduced_count gives m)"
        )));
    }
    Ok(needed)
}

/// Compresses `batch` images of `n x d` tokens (`tokens`, row-major, of type `dtype`, aligned
/// to it) to `m` tokens each: writes `batch x m x d` floats to `out` (room for `out_len`
/// floats) and `m` to `*m` (when `m` is not NULL; written as soon as it is known, so also when
/// `out_len` is too small). `params` NULL: the defaults. Calls on one compressor may run from
/// several threads at once, each with the result it would have alone.
///
/// # Safety
/// `compressor` is open; `tokens` holds `batch * n * d` values of `dtype`; `params` is NULL
/// or valid (its `attention` NULL or `batch * n` floats); `out` has room for `out_len`
/// floats; `m` is NULL or writable.
#[no_mangle]
#[allow(clippy::too_many_arguments)] // SPEC section 9's signature.
pub unsafe extern "C" fn mc_compress(
    compressor: *mut mc_compressor,
    tokens: *const c_void,
    dtype: DtypeCode,
    batch: usize,
    n: usize,
    d: usize,
    params: *const mc_call_params,
    out: *mut f32,
    out_len: usize,
    m: *mut usize,
) -> mc_status {
    // SAFETY: the caller's promises, passed on.
    unsafe {
        mc_compress_sharing(
            compressor,
            tokens,
            dtype,
            batch,
            n,
            d,
            params,
            std::ptr::null(),
            0,
            out,
            out_len,
            m,
        )
    }
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

/// `mc_compress` with `n_extra` more token sets of the same images (`extra`, NULL when
/// `n_extra` is 0): the main tokens' `P` is applied to each (`P X_k`, one `P`, several
/// products), as models whose vision tower hands over several sets per image need (Qwen3-VL's
/// deepstack features, added at the image tokens of the language model's first layers).
/// Everything else is as `mc_compress`.
///
/// # Safety
/// As `mc_compress`; `extra` is NULL or `n_extra` valid `mc_token_set`s, each holding
/// `batch * n * d` values of its dtype and room for its `out_len` floats.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn mc_compress_sharing(
    compressor: *mut mc_compressor,
    tokens: *const c_void,
    dtype: DtypeCode,
    batch: usize,
    n: usize,
    d: usize,
    params: *const mc_call_params,
    extra: *const mc_token_set,
    n_extra: usize,
    out: *mut f32,
    out_len: usize,
    m: *mut usize,
) -> mc_status {
    guard(|| {
        let function = if extra.is_null() && n_extra == 0 {
            "mc_compress"
        } else {
            "mc_compress_sharing"
        };
        // SAFETY: the caller's promise.
        let compressor = unsafe { required(compressor.cast_const(), function, "compressor")? };
        let out = output(out, function, "out")?;
        // SAFETY: the caller's promise.
        let values = unsafe { host_values(tokens, dtype, (batch, n, d), function, "tokens")? };
        let sets: &[mc_token_set] = match (extra.is_null(), n_extra) {
            (_, 0) => &[],
            (true, count) => {
                return Err(usage(format!(
                    "{function}: extra is NULL but n_extra = {count}; expected {count} \
                     mc_token_set entries"
                )))
            }
            (false, count) if count > 4096 => {
                return Err(usage(format!(
                    "{function}: n_extra = {count} is out of range; expected at most 4096 sets"
                )))
            }
            // SAFETY: the caller's promise of `count` entries (bounded above).
            (false, count) => unsafe { std::slice::from_raw_parts(extra, count) },
        };
        let mut extra_values = Vec::with_capacity(sets.len());
        for (index, set) in sets.iter().enumerate() {
            let what = format!("extra[{index}].tokens");
            output(set.out, function, &format!("extra[{index}].out"))?;
            // SAFETY: the caller's promise.
            let values =
                unsafe { host_values(set.tokens, set.dtype, (batch, n, set.d), function, &what)? };
            extra_values.push(values);
        }
        // SAFETY: the caller's promise.
        let call = unsafe { Call::read(params, n, function)? };
        let queries = call.queries();
        if !m.is_null() {
            // SAFETY: writable by the caller's promise.
            unsafe { *m = queries.count };
        }
        let needed = room(function, "out_len", out_len, (batch, queries.count, d))?;
        let mut extra_needed = Vec::with_capacity(sets.len());
        for (index, set) in sets.iter().enumerate() {
            let what = format!("extra[{index}].out_len");
            extra_needed.push(room(
                function,
                &what,
                set.out_len,
                (batch, queries.count, set.d),
            )?);
        }
        let attention = match call.attention.is_null() {
            true => None,
            // SAFETY: the caller's promise of `batch * n` floats.
            false => Some(unsafe { std::slice::from_raw_parts(call.attention, batch * n) }),
        };
        let request = Request {
            features: HostTokens::new(values, batch, n, d)?,
            layout: &call.layout,
            attention,
            seed: call.seed,
        };
        let extra_tokens = extra_values
            .into_iter()
            .zip(sets)
            .map(|(values, set)| HostTokens::new(values, batch, n, set.d))
            .collect::<Result<Vec<_>>>()?;
        let (reduced, reduced_extra) = compressor.install(|| {
            if extra_tokens.is_empty() {
                let reduced = compressor
                    .runner
                    .run(call.method, &request, &call.options)?;
                Ok::<_, Error>((reduced, Vec::new()))
            } else {
                let shared = compressor.runner.run_sharing(
                    call.method,
                    &request,
                    &extra_tokens,
                    &call.options,
                )?;
                Ok((shared.main, shared.extra))
            }
        })?;
        // SAFETY: room for `out_len >= needed` floats, by the caller's promise.
        let out = unsafe { std::slice::from_raw_parts_mut(out, needed) };
        out.copy_from_slice(&reduced.tokens);
        for ((set, tokens), needed) in sets.iter().zip(&reduced_extra).zip(extra_needed) {
            // SAFETY: room for `set.out_len >= needed` floats, by the caller's promise.
            let out = unsafe { std::slice::from_raw_parts_mut(set.out, needed) };
            out.copy_from_slice(tokens);
        }
        Ok(())
    })
}

/// The grids of a layout preset (the CLI's `--layout`: `llava-1.5`,
/// `llava-next:WIDTHxHEIGHT`, `llava-onevision:WIDTHxHEIGHT`, `llava-onevision-video:FRAMES`,
/// `qwen2-vl:TxHxW`, `qwen2.5-vl:TxHxW`, `qwen3-vl:TxHxW`), with the model's `pinpoints` as
/// JSON (`[[336,672],...]`, LLaVA-NeXT and LLaVA-OneVision; NULL: the model's defaults): the number of grids in `*n_grids`, the
/// tokens per image in `*n`, and the grids in `grids` (room for `capacity`). With `grids` NULL
/// and `capacity` 0 it only counts; a `capacity` below the count is a usage error (the counts
/// are written all the same).
///
/// # Safety
/// `preset` and `pinpoints` are NULL or NUL-terminated; `grids` NULL or room for `capacity`
/// entries; `n_grids` and `n` writable.
#[no_mangle]
pub unsafe extern "C" fn mc_layout(
    preset: *const c_char,
    pinpoints: *const c_char,
    grids: *mut mc_grid,
    capacity: usize,
    n_grids: *mut usize,
    n: *mut usize,
) -> mc_status {
    guard(|| {
        let function = "mc_layout";
        let (n_grids, n) = (
            output(n_grids, function, "n_grids")?,
            output(n, function, "n")?,
        );
        // SAFETY: the caller's promise of NUL-terminated strings.
        let (preset, pinpoints) = unsafe {
            (
                text(preset, "mc_layout: preset")?,
                text(pinpoints, "mc_layout: pinpoints")?,
            )
        };
        let preset = preset
            .ok_or_else(|| usage(format!("{function}: preset is NULL; expected a pointer")))?;
        let pinpoints = pinpoints.map(parse_pinpoints).transpose()?;
        let layout = Layout::preset(preset, pinpoints.as_deref())?;
        let count = layout.grids().len();
        // SAFETY: checked non-NULL; writable by the caller's promise.
        unsafe {
            *n_grids = count;
            *n = layout.tokens();
        }
        if grids.is_null() {
            return match capacity {
                0 => Ok(()),
                _ => Err(usage(format!(
                    "{function}: grids is NULL with capacity = {capacity}; expected a pointer \
                     (or capacity 0 to count only)"
                ))),
            };
        }
        if capacity < count {
            return Err(usage(format!(
                "{function}: capacity = {capacity} grids is too small; {preset} has {count}"
            )));
        }
        // SAFETY: room for `capacity >= count` entries, by the caller's promise.
        let out = unsafe { std::slice::from_raw_parts_mut(grids, count) };
        for (entry, grid) in out.iter_mut().zip(layout.grids()) {
            *entry = mc_grid {
                offset: grid.offset as u64,
                height: grid.height as u64,
                width: grid.width as u64,
                stride: grid.stride as u64,
            };
        }
        Ok(())
    })
}

/// This thread's last error line (empty before any failure): valid until this thread's next
/// failing call. Never NULL.
#[no_mangle]
pub extern "C" fn mc_last_error() -> *const c_char {
    LAST_ERROR
        .try_with(|last| last.borrow().as_ptr())
        .unwrap_or(c"".as_ptr())
}

/// Frees a compressor (NULL is fine). No call on it may be running or follow.
///
/// # Safety
/// `compressor` is NULL or from `mc_open` and not closed yet.
#[no_mangle]
pub unsafe extern "C" fn mc_close(compressor: *mut mc_compressor) {
    if compressor.is_null() {
        return;
    }
    guard(|| {
        // SAFETY: from `mc_open`'s `Box::into_raw`, closed once, by the caller's promise.
        drop(unsafe { Box::from_raw(compressor) });
        Ok(())
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_mc_error_with_a_line() {
        let status = guard(|| panic!("boom at the boundary"));
        assert_eq!(status, mc_status::MC_ERROR);
        // SAFETY: mc_last_error never returns NULL.
        let line = unsafe { CStr::from_ptr(mc_last_error()) }.to_str().unwrap();
        assert_eq!(
            line,
            "internal error (a bug in metacompress): boom at the boundary"
        );
    }

    #[test]
    fn usage_errors_and_failures_keep_the_cli_classification() {
        let status = guard(|| Err(Error::InvalidArgument("bad\nvalue".to_string())));
        assert_eq!(status, mc_status::MC_USAGE);
        // SAFETY: mc_last_error never returns NULL.
        let line = unsafe { CStr::from_ptr(mc_last_error()) }.to_str().unwrap();
        assert_eq!(line, "bad value");
        let status = guard(|| Err(Error::Gpu("lost".to_string())));
        assert_eq!(status, mc_status::MC_ERROR);
    }
}

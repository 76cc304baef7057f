//! The C API's calls: open a compressor, describe it, count and compress, lay out a preset,
//! read the last error, close. Each checks its arguments (`arguments.rs`), calls the library
//! in the guard (`status.rs`) and writes its results.

use std::ffi::{c_char, c_void, CString};
use std::ptr::null_mut;

use library::methods::{Request, Runner};
use library::{
    files, parse_pinpoints, Backend, Error, HostTokens, Layout, Precision, ProcessPool, Result,
    MAX_THREADS,
};

use crate::arguments::{host_values, named, output, path, required, room, text, usage, Call};
use crate::params::{
    mc_call_params, mc_grid, mc_open_params, mc_open_params_default, mc_token_set, DtypeCode,
};
use crate::status::{guard, mc_status, LAST_ERROR};

/// A compressor: weights (if any) on a backend, ready for any number of calls, from any
/// number of threads at once. Opaque; made by `mc_open`, freed by `mc_close`.
pub struct mc_compressor {
    runner: Runner,
    /// `mc_device`'s answer, alive as long as the compressor.
    device: CString,
    /// The CPU path's own threads, when `mc_open_params.threads` (or `RAYON_NUM_THREADS`)
    /// asked for a number; else `ALL_CORES`.
    pool: Option<ProcessPool>,
}

/// One thread per logical CPU, for every compressor without a count of its own. Not rayon's
/// global pool: a process that forks after a call (a pre-forking server) has none of that
/// pool's threads in the child, and its calls would wait for ever; a `ProcessPool` is rebuilt
/// there.
static ALL_CORES: ProcessPool = ProcessPool::new(None);

// Several threads may call one compressor at once (SPEC section 9).
const _: fn() = || {
    fn shared<T: Send + Sync>() {}
    shared::<mc_compressor>();
};

impl mc_compressor {
    /// Runs `work` on the compressor's threads (built in this process at its first call).
    fn install<R: Send>(&self, work: impl FnOnce() -> Result<R> + Send) -> Result<R> {
        self.pool.as_ref().unwrap_or(&ALL_CORES).install(work)?
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
        let pool = library::threads_from(requested)?.map(|threads| ProcessPool::new(Some(threads)));
        quiet_mesa();
        let weights = weights_path.map(files::read_weights).transpose()?;
        let open = || -> Result<(Runner, String)> {
            let runner = Runner::new(weights, backend, adapter, precision)?;
            let device = runner.device();
            Ok((runner, device))
        };
        // The CPU path's description counts the threads of the pool it runs on.
        let (runner, device) = pool.as_ref().unwrap_or(&ALL_CORES).install(open)??;
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

/// Headless Linux: Mesa's Wayland probe prints "XDG_RUNTIME_DIR is invalid or not set" on
/// the application's stderr when a device is opened with the variable unset or empty. An
/// `mc_open` that finds it so sets it to the temporary folder then, as the CLI and the Python package do
/// at their start (an application that reads its environment from other threads while it
/// calls `mc_open` sets the variable itself first).
fn quiet_mesa() {
    if cfg!(target_os = "linux")
        && std::env::var_os("XDG_RUNTIME_DIR").is_none_or(|dir| dir.is_empty())
    {
        std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
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
            false if !(call.attention as usize).is_multiple_of(align_of::<f32>()) => {
                return Err(usage(format!(
                    "{function}: mc_call_params.attention is not aligned to float's 4 bytes"
                )))
            }
            // SAFETY: the caller's promise of `batch * n` floats (alignment checked).
            false => Some(unsafe { std::slice::from_raw_parts(call.attention, batch * n) }),
        };
        let widths: Vec<usize> = sets.iter().map(|set| set.d).collect();
        let (reduced, reduced_extra) = compressor.install(|| {
            // The finite-value checks read every value: on the compressor's threads too.
            let request = Request {
                features: HostTokens::new(values, batch, n, d)?,
                layout: &call.layout,
                attention,
                seed: call.seed,
            };
            let extra_tokens = extra_values
                .into_iter()
                .zip(&widths)
                .enumerate()
                .map(|(index, (values, &width))| {
                    HostTokens::named(&format!("extra[{index}].tokens"), values, batch, n, width)
                })
                .collect::<Result<Vec<_>>>()?;
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

/// The loaded library's version, `"MAJOR.MINOR.PATCH"` (static; never freed): compare it with
/// `MC_VERSION_MAJOR`, `MC_VERSION_MINOR` and `MC_VERSION_PATCH`, the version of the header the
/// program was compiled against.
#[no_mangle]
pub extern "C" fn mc_version() -> *const c_char {
    VERSION.as_ptr()
}

/// `library::VERSION` as a C string (the workspace's one version; a unit test holds them equal).
const VERSION: &std::ffi::CStr = match std::ffi::CStr::from_bytes_with_nul(
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes(),
) {
    Ok(version) => version,
    Err(_) => panic!("the version holds no NUL"),
};

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
    #[test]
    fn the_c_version_is_the_librarys() {
        let version = unsafe { std::ffi::CStr::from_ptr(super::mc_version()) };
        assert_eq!(version.to_str(), Ok(library::VERSION));
    }
}

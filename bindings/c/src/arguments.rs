//! The C arguments checked and turned into the library's types: pointers, strings, names,
//! the tokens and the room for the output, and a call's parameters (`Call`).

use std::ffi::{c_char, c_void, CStr};
use std::path::Path;

use clap::ValueEnum;
use library::methods::Method;
use library::{Error, Grid, HostValues, Keep, Layout, Options, Queries, Result, Scope};

use crate::params::{mc_call_params, mc_call_params_default, mc_dtype, mc_grid, DtypeCode};

/// Most tokens per image (2^26, far past any model): a layout keeps 4 bytes per token, and
/// `mc_reduced_count` has no buffer whose size bounds `n`, so a wild `n` must not become a
/// wild allocation.
const MAX_TOKENS: usize = 1 << 26;

/// A usage error of the C layer's own checks.
pub(crate) fn usage(line: String) -> Error {
    Error::InvalidArgument(line)
}

/// `pointer` as a reference, or a usage error naming it.
///
/// # Safety
/// `pointer` is NULL or points to a valid `T`.
pub(crate) unsafe fn required<'a, T>(
    pointer: *const T,
    function: &str,
    name: &str,
) -> Result<&'a T> {
    // SAFETY: the caller's promise; NULL is refused.
    unsafe { pointer.as_ref() }
        .ok_or_else(|| usage(format!("{function}: {name} is NULL; expected a pointer")))
}

/// An output pointer, or a usage error naming it.
pub(crate) fn output<T>(pointer: *mut T, function: &str, name: &str) -> Result<*mut T> {
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
pub(crate) unsafe fn text<'a>(pointer: *const c_char, name: &str) -> Result<Option<&'a str>> {
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
pub(crate) unsafe fn path<'a>(pointer: *const c_char, name: &str) -> Result<Option<&'a Path>> {
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
pub(crate) fn named<T: ValueEnum>(name: &str, value: &str) -> Result<T> {
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

/// A call's arguments in the library's types.
pub(crate) struct Call {
    pub(crate) layout: Layout,
    pub(crate) options: Options,
    pub(crate) method: Method,
    pub(crate) seed: u64,
    pub(crate) attention: *const f32,
}

impl Call {
    /// Reads `params` (NULL: the defaults) for images of `n` tokens; `function` names the
    /// caller in the lines of errors.
    ///
    /// # Safety
    /// `params` is NULL or an `mc_call_params` whose strings and grids are valid.
    pub(crate) unsafe fn read(
        params: *const mc_call_params,
        n: usize,
        function: &str,
    ) -> Result<Call> {
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
    pub(crate) fn queries(&self) -> Queries {
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

/// `count` values of `dtype` at `tokens`, checked: not NULL, a known dtype, aligned to it,
/// `batch x n x d` within memory. `function` and `what` name them in errors.
///
/// # Safety
/// `tokens` is NULL or holds `batch * n * d` values of `dtype`.
pub(crate) unsafe fn host_values<'a>(
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
    // The width as the caller set it: `d`, or an extra set's `extra[1].d`.
    let width = match what.strip_suffix("tokens") {
        Some(set) => format!("{set}d"),
        None => "d".to_string(),
    };
    if batch == 0 || d == 0 {
        return Err(usage(format!(
            "{function}: batch = {batch}, {width} = {d}; expected both at least 1"
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
                "{function}: batch x n x {width} = {batch} x {n} x {d} values of {what} is more \
                 than memory can hold"
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
pub(crate) fn room(
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

//! What a call did: its status, the line of its failure (this thread's last error), and the
//! guard every call's body runs in, so that no error or panic crosses the boundary unsaid.

use std::cell::RefCell;
use std::ffi::CString;
use std::panic::{catch_unwind, AssertUnwindSafe};

use library::Result;

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

thread_local! {
    /// This thread's last error line.
    pub(crate) static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Remembers `line` as this thread's last error.
fn remember(line: &str) {
    let line = CString::new(line.replace('\0', "\\0")).unwrap_or_default();
    let _ = LAST_ERROR.try_with(|last| *last.borrow_mut() = line);
}

/// Runs one API call's body: its error as a status and a line, a panic as `MC_ERROR`.
pub(crate) fn guard(body: impl FnOnce() -> Result<()>) -> mc_status {
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

#[cfg(test)]
mod tests {
    use std::ffi::CStr;

    use library::Error;

    use super::*;
    use crate::calls::mc_last_error;

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

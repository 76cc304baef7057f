//! The library's one error type. The command line only formats it.

use std::fmt;

/// Everything that can go wrong in metacompress, as variants a caller can match on.
#[derive(Debug)]
pub enum Error {
    /// A value given by the caller (a flag, an option, a layout) is out of its range.
    /// The command line exits with status 2 for these.
    InvalidArgument(String),
    /// A tensor (features or weights) has the wrong name, shape, dtype or values.
    InvalidTensor(String),
    /// A file could not be parsed as what it should be (safetensors, metadata).
    Format(String),
    /// Reading or writing a file failed.
    Io {
        /// The file concerned.
        path: String,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// No adapter matches the request (backend, name), or none exists.
    NoAdapter(String),
    /// The adapter lacks something the request needs (f16, buffer size).
    Unsupported(String),
    /// The GPU device reported an error (validation, out of memory).
    Gpu(String),
    /// A call needs more GPU memory than the compressor's budget or the device's limits
    /// allow; raised before any device work.
    TooLarge(String),
    /// The device was lost (driver reset, unplugged, destroyed); build a new compressor.
    DeviceLost(String),
    /// Finite inputs made a value past the range of the type it is computed or stored in
    /// (f32 scores of huge features, f16 storage of values past 65504): refused rather than
    /// handed back as NaN or infinity.
    Overflow(String),
}

impl Error {
    /// Whether the error is a usage error (exit status 2) rather than a failure (exit status 1).
    pub fn is_usage(&self) -> bool {
        matches!(self, Error::InvalidArgument(_))
    }

    /// The error as one line a terminal shows as it is (what the command line prints after
    /// `metacompress: `, and the message of the Python binding's exceptions).
    pub fn line(&self) -> String {
        one_line(&self.to_string())
    }

    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidArgument(message)
            | Error::InvalidTensor(message)
            | Error::Format(message)
            | Error::NoAdapter(message)
            | Error::Unsupported(message)
            | Error::Gpu(message)
            | Error::TooLarge(message)
            | Error::DeviceLost(message)
            | Error::Overflow(message) => f.write_str(message),
            Error::Io { path, source } => write!(f, "{path}: {source}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The library's result type.
pub type Result<T> = std::result::Result<T, Error>;

/// `text` as one line a terminal shows as it is: control characters escaped, and any run of
/// more than 160 characters without a space (a value echoed back unquoted) cut short once,
/// a quote it opened closed. What `quoted` makes (80 characters and a short prefix) stays
/// under it, so a value is never cut twice.
pub fn one_line(text: &str) -> String {
    const LONGEST_WORD: usize = 160;
    let escaped: String = text
        .chars()
        .flat_map(|c| match c {
            '\n' | '\r' | '\t' => vec![' '],
            c if c.is_control() => c.escape_default().collect(),
            c => vec![c],
        })
        .collect();
    escaped
        .split(' ')
        .map(|word| match word.char_indices().nth(LONGEST_WORD) {
            Some((cut, _)) => {
                let head = &word[..cut];
                let close = if head.matches('"').count() % 2 == 1 {
                    "\""
                } else {
                    ""
                };
                format!("{head}{close}...({} characters)", word.chars().count())
            }
            None => word.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `text` as an error message echoes it: in quotes, control characters escaped, cut to about
/// 80 characters (a bad value may be a 400 KB string).
pub(crate) fn quoted(text: &str) -> String {
    let (head, cut) = cut_value(text);
    format!("\"{head}\"{cut}")
}

/// `text` (a value's `repr`, a list a caller passed) as a message echoes it without quotes:
/// control characters escaped, cut after 80 characters with its length, as `quoted` cuts.
pub fn echoed(text: &str) -> String {
    let (head, cut) = cut_value(text);
    format!("{head}{cut}")
}

/// The escaped head of `text` (at most 80 characters) and what says it was cut, if it was.
fn cut_value(text: &str) -> (String, String) {
    const MOST: usize = 80;
    let escaped: String = text.chars().flat_map(char::escape_debug).collect();
    match escaped.char_indices().nth(MOST) {
        Some((cut, _)) => (
            escaped[..cut].to_string(),
            format!("... ({} characters)", text.chars().count()),
        ),
        None => (escaped, String::new()),
    }
}

//! The C API of metacompress (SPEC section 9): `libmetacompress.so` / `libmetacompress.a` and
//! `include/metacompress.h`, generated from this crate by cbindgen (`tests/header.rs` fails
//! when the committed header is stale; `METACOMPRESS_BLESS=1` rewrites it).
//!
//! A door, not a room of its own: each function turns its C arguments into the library's types
//! (checking every pointer and size first), calls `Runner` (`Compressor` for `metacompress`,
//! the other methods' reducer), and turns `Error` into a status (`Error::is_usage`: MC_USAGE,
//! else MC_ERROR) and the command line's one line (`Error::line`) in `mc_last_error()`. No
//! panic crosses the boundary; the only state besides the compressors is that line, per thread.
//!
//! The rooms, bottom up: `status.rs` (a call's status, its line, the guard), `params.rs` (the
//! parameter types and their defaults), `arguments.rs` (the C arguments checked and read into
//! the library's types), `calls.rs` (the API's functions).

// The C names are the API's names.
#![allow(non_camel_case_types)]

mod arguments;
mod status;

// cbindgen writes the functions in the order it reads them, the crate root's modules one after
// the other: the defaults (`params.rs`) before the calls (`calls.rs`), as the header has them.
mod params;

mod calls;

// Hostile use of the calls (issue 34): sets named in messages, alignment, the environment.
#[cfg(test)]
mod hardening;

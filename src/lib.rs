//! metacompress: learned visual-token compression (MetaCompress, CVPR 2026) for
//! vision-language models, on any GPU through wgpu and hand-written WGSL, with a float64 CPU
//! reference. `../shared/SPEC.md`'s contract is summarised in `docs/FORMATS.md`.
//!
//! ```no_run
//! use metacompress::{Backend, Compressor, Features, Layout, Options, PMeta, Precision};
//!
//! # fn main() -> metacompress::Result<()> {
//! // P_meta for 1024-wide tokens, projected to 64 channels (the paper's initialisation).
//! let weights = PMeta::init(1024, 64, Some((24, 24)), 1.0, 0)?;
//! let compressor = Compressor::new(weights, Backend::Auto, None, Precision::F32)?;
//! // One LLaVA-1.5-shaped image: 576 tokens on a 24x24 grid.
//! let values = vec![0.5f32; 576 * 1024];
//! let features = Features::new(1, 576, 1024, values)?;
//! let layout = Layout::square(576)?;
//! let reduced = compressor.compress(&features, &layout, &Options::default())?;
//! assert_eq!(reduced.queries.count, 64); // keep 0.1 -> an 8x8 query grid
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

// The layers, bottom up (docs/ARCHITECTURE.md; `layering.rs` checks that each module imports
// only from below).
pub(crate) mod backend;
pub mod bench;
pub mod compare;
pub(crate) mod compress;
pub(crate) mod cpu;
pub mod demo;
pub(crate) mod error;
pub mod files;
pub mod gpu;
pub(crate) mod host_math;
pub(crate) mod layout;
pub mod methods;
pub(crate) mod options;
pub mod pictures;
pub(crate) mod presets;
pub(crate) mod products;
pub(crate) mod profile;
pub mod reference;
pub(crate) mod tensor;
pub(crate) mod weights;

#[cfg(test)]
mod layering;

pub use compress::{CompressFuture, Compressed, Compressor};
pub use error::{echoed, one_line, Error, Result};
pub use gpu::memory::MemoryCount;
pub use gpu::resident::{GpuCompressed, GpuTokens, Tokens};
pub use gpu::{GpuApi, GpuContext};
pub use layout::{
    parse_grid_flags, parse_grids_json, Grid, Keep, Keys, Layout, Queries, QueryGrid, Scope,
};
pub use options::{
    check_threads, threads_from, Association, Backend, Elem, KernelVariant, Options, Precision,
    ProcessPool, SplitK, MAX_PIECES, MAX_THREADS,
};
pub use presets::{parse_pinpoints, LLAVA_NEXT_PINPOINTS, LLAVA_ONEVISION_PINPOINTS};
pub use profile::{Clock, Profile, StepTime};
pub use tensor::{check_fits_f16, Dtype, Features, HostTokens, HostValues};
pub use weights::{PMeta, PositionTable};

/// This library's version (`Cargo.toml`'s, the one version of the crate, the CLI's `--version`,
/// the Python package's `__version__` and the C API's `mc_version()`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

// The README's examples compile and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

//! The GPU runtime: the device (`context`), buffers and their ledger (`memory`, `buffers`),
//! inputs and outputs that stay on the device (`resident`), the WGSL sources (`shaders`) and
//! one module per kernel family (`kernels`), the plan of a call (`plan`), the forward engine
//! (`engine`) and the methods' reduction (`reduction`).

pub(crate) mod buffers;
pub(crate) mod context;
pub(crate) mod engine;
pub(crate) mod kernels;
pub(crate) mod memory;
pub(crate) mod plan;
pub(crate) mod reduction;
pub(crate) mod resident;
pub(crate) mod scope;
pub(crate) mod shaders;

pub use crate::options::GpuApi;
pub use context::{list_adapters, AdapterReport, GpuContext};

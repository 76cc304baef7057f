//! Everything that runs on a GPU through wgpu: the context, buffers and the forward pass.

pub mod buffers;
pub mod context;
pub mod forward;
pub mod memory;
pub mod plan;
pub mod reduction;
pub mod resident;

pub use context::{list_adapters, AdapterReport, GpuApi, GpuContext};
pub use forward::GpuEngine;

//! Everything that runs on a GPU through wgpu: the context, buffers and the forward pass.

pub mod buffers;
pub mod context;
pub mod forward;

pub use context::{list_adapters, AdapterReport, GpuApi, GpuContext};
pub use forward::GpuEngine;

//! Error scopes around device work: what wgpu reports asynchronously becomes this call's error.

use crate::error::{Error, Result};

/// Runs `work` inside validation and out-of-memory error scopes (this thread's) and turns
/// what they catch into an error.
pub(crate) fn scoped<T>(device: &wgpu::Device, what: &str, work: impl FnOnce() -> T) -> Result<T> {
    let memory = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let value = work();
    let validation = pollster::block_on(validation.pop());
    let memory = pollster::block_on(memory.pop());
    match validation.or(memory) {
        Some(error @ wgpu::Error::OutOfMemory { .. }) => Err(Error::TooLarge(format!(
            "{what} ran out of GPU memory: {error}"
        ))),
        Some(error) => Err(Error::Gpu(format!("{what} failed on the GPU: {error}"))),
        None => Ok(value),
    }
}

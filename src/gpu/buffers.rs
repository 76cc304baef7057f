//! GPU buffers: uploads in a kernel element type, outputs (optionally poisoned), read-back.

use std::sync::Arc;

use super::memory::{Ledger, Tracked};

use crate::error::{Error, Result};
use crate::options::Elem;
use crate::tensor::{decode, encode};

/// Bytes of `values` stored as `elem`.
pub fn elem_bytes(values: &[f32], elem: Elem) -> Vec<u8> {
    encode(values, elem.dtype())
}

/// The first `count` values stored as `elem` in `bytes` (the rest is padding), widened to f32.
pub fn elem_values(bytes: &[u8], elem: Elem, count: usize) -> Vec<f32> {
    let mut values = decode(bytes, elem.dtype());
    values.truncate(count);
    values
}

/// Bytes a buffer of `count` elements of `size` bytes takes, padded to wgpu's 4-byte copy unit.
pub fn padded_size(count: usize, size: usize) -> u64 {
    ((count * size).max(1) as u64).next_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT)
}

/// A read-only storage buffer holding `bytes`, counted by `ledger`.
pub fn storage_with(
    ledger: &Arc<Ledger>,
    device: &wgpu::Device,
    label: &str,
    bytes: &[u8],
) -> Tracked {
    ledger.create_init(
        device,
        label,
        bytes,
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
    )
}

/// A storage buffer for a kernel to write, of `bytes` bytes, with `extra` usages. With
/// `poison`, every byte is 0xFF (NaN in f32 and f16), so an element no kernel writes cannot
/// pass for a right one.
pub fn storage_output(
    ledger: &Arc<Ledger>,
    device: &wgpu::Device,
    label: &str,
    bytes: u64,
    extra: wgpu::BufferUsages,
    poison: bool,
) -> Tracked {
    let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | extra;
    if poison {
        ledger.create_init(device, label, &vec![0xFF; bytes as usize], usage)
    } else {
        ledger.create(device, label, bytes, usage)
    }
}

/// Records into `encoder` a copy of `source` into a new buffer the host can map, and returns
/// that buffer: the first half of every read-back (the forward engine's outputs, the methods'
/// reduction, `read_buffer`); `read_staging` is the second.
pub fn copy_to_staging(
    ledger: &Arc<Ledger>,
    device: &wgpu::Device,
    encoder: &mut wgpu::CommandEncoder,
    source: &wgpu::Buffer,
) -> Tracked {
    let staging = ledger.create(
        device,
        "read-back",
        source.size(),
        wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
    );
    encoder.copy_buffer_to_buffer(source, 0, &staging, 0, None);
    staging
}

/// Waits for the GPU and returns the bytes of a mapped-for-reading staging buffer.
pub fn read_staging(device: &wgpu::Device, staging: &wgpu::Buffer) -> Result<Vec<u8>> {
    let slice = staging.slice(..);
    let (sender, receiver) = std::sync::mpsc::channel();
    slice.map_async(wgpu::MapMode::Read, move |result| {
        let _ = sender.send(result);
    });
    device
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| Error::Gpu(format!("waiting for the GPU failed: {e}")))?;
    receiver
        .recv()
        .map_err(|_| Error::Gpu("the GPU never answered the read-back".into()))?
        .map_err(|e| Error::Gpu(format!("reading results back failed: {e}")))?;
    let bytes = slice
        .get_mapped_range()
        .map_err(|e| Error::Gpu(format!("reading results back failed: {e}")))?
        .to_vec();
    staging.unmap();
    Ok(bytes)
}

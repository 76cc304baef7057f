//! The GPU memory a compressor holds, counted buffer by buffer: every buffer the library
//! creates goes through a `Ledger`, which adds its size when it is created and takes it off
//! when the library drops it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use wgpu::util::DeviceExt;

/// Running totals of the buffers one compressor has created.
#[derive(Debug, Default)]
pub struct Ledger {
    live: AtomicU64,
    peak: AtomicU64,
    created: AtomicU64,
}

/// What a ledger has counted so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryCount {
    /// Bytes of the buffers alive now (weights, and those of calls in progress).
    pub live_bytes: u64,
    /// The most bytes alive at once so far.
    pub peak_bytes: u64,
    /// Buffers created so far.
    pub buffers_created: u64,
}

impl Ledger {
    /// A ledger with nothing counted.
    pub fn new() -> Arc<Self> {
        Arc::new(Ledger::default())
    }

    /// The totals now.
    pub fn count(&self) -> MemoryCount {
        MemoryCount {
            live_bytes: self.live.load(Ordering::SeqCst),
            peak_bytes: self.peak.load(Ordering::SeqCst),
            buffers_created: self.created.load(Ordering::SeqCst),
        }
    }

    /// Starts the peak again from what is alive now (to measure one call's peak).
    pub fn reset_peak(&self) {
        self.peak
            .store(self.live.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    fn track(self: &Arc<Self>, buffer: wgpu::Buffer) -> Tracked {
        let bytes = buffer.size();
        let live = self.live.fetch_add(bytes, Ordering::SeqCst) + bytes;
        self.peak.fetch_max(live, Ordering::SeqCst);
        self.created.fetch_add(1, Ordering::SeqCst);
        Tracked {
            buffer,
            ledger: Arc::clone(self),
        }
    }

    /// A buffer of `size` bytes with `usage`, not mapped.
    pub fn create(
        self: &Arc<Self>,
        device: &wgpu::Device,
        label: &str,
        size: u64,
        usage: wgpu::BufferUsages,
    ) -> Tracked {
        self.track(device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage,
            mapped_at_creation: false,
        }))
    }

    /// A buffer holding `contents` (padded to 4 bytes), with `usage`.
    pub fn create_init(
        self: &Arc<Self>,
        device: &wgpu::Device,
        label: &str,
        contents: &[u8],
        usage: wgpu::BufferUsages,
    ) -> Tracked {
        self.track(
            device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents,
                usage,
            }),
        )
    }
}

/// A buffer the ledger counts until it is dropped (or handed over with `release`).
#[derive(Debug)]
pub struct Tracked {
    buffer: wgpu::Buffer,
    ledger: Arc<Ledger>,
}

impl Tracked {
    /// Hands the buffer to someone outside the library: the ledger stops counting it.
    pub fn release(self) -> wgpu::Buffer {
        self.buffer.clone()
    }
}

impl std::ops::Deref for Tracked {
    type Target = wgpu::Buffer;

    fn deref(&self) -> &wgpu::Buffer {
        &self.buffer
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.ledger
            .live
            .fetch_sub(self.buffer.size(), Ordering::SeqCst);
    }
}

//! The GPU memory a compressor holds, counted buffer by buffer: every buffer the library
//! creates goes through a `Ledger`, which adds its size when it is created and takes it off
//! when the library drops it. A ledger made with `Ledger::pooled` also keeps the buffers a
//! call drops (up to a limit of bytes) and hands them to later calls that ask for the same
//! size and usage, so a compressor serving calls of one shape stops creating buffers after
//! the first call.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use wgpu::util::DeviceExt;

/// Bytes of free buffers a pooled ledger keeps by default.
pub const DEFAULT_POOL_LIMIT: u64 = 256 << 20;

/// Running totals of the buffers one compressor has created, and its pool.
#[derive(Debug, Default)]
pub struct Ledger {
    live: AtomicU64,
    pooled: AtomicU64,
    peak: AtomicU64,
    created: AtomicU64,
    /// Free buffers kept for reuse.
    free: Mutex<Vec<wgpu::Buffer>>,
    /// Most bytes `free` may hold (0: no pool).
    pool_limit: AtomicU64,
    /// Refills a reused buffer that is created with contents.
    queue: Option<wgpu::Queue>,
}

/// What a ledger has counted so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryCount {
    /// Bytes of the buffers in use now (weights, and those of calls in progress).
    pub live_bytes: u64,
    /// Bytes of free buffers kept for later calls (see `Compressor::set_pool_limit`).
    pub pooled_bytes: u64,
    /// The most bytes held at once so far, in use and pooled together.
    pub peak_bytes: u64,
    /// Buffers created so far (a buffer taken from the pool is not created again).
    pub buffers_created: u64,
}

impl Ledger {
    /// A ledger with nothing counted and no pool.
    pub fn new() -> Arc<Self> {
        Arc::new(Ledger::default())
    }

    /// A ledger that pools free buffers, up to `limit` bytes; `queue` refills reused buffers
    /// that are asked for with contents.
    pub fn pooled(queue: wgpu::Queue, limit: u64) -> Arc<Self> {
        Arc::new(Ledger {
            pool_limit: AtomicU64::new(limit),
            queue: Some(queue),
            ..Ledger::default()
        })
    }

    /// The totals now.
    pub fn count(&self) -> MemoryCount {
        MemoryCount {
            live_bytes: self.live.load(Ordering::SeqCst),
            pooled_bytes: self.pooled.load(Ordering::SeqCst),
            peak_bytes: self.peak.load(Ordering::SeqCst),
            buffers_created: self.created.load(Ordering::SeqCst),
        }
    }

    /// Sets the most bytes of free buffers to keep (0 keeps none) and lets go of what is
    /// kept beyond it.
    pub fn set_pool_limit(&self, limit: u64) {
        self.pool_limit.store(limit, Ordering::SeqCst);
        let mut free = self.free.lock().expect("pool");
        while self.pooled.load(Ordering::SeqCst) > limit {
            let Some(buffer) = free.pop() else { break };
            self.pooled.fetch_sub(buffer.size(), Ordering::SeqCst);
        }
    }

    /// Lets go of every pooled buffer.
    pub fn trim(&self) {
        let mut free = self.free.lock().expect("pool");
        for buffer in free.drain(..) {
            self.pooled.fetch_sub(buffer.size(), Ordering::SeqCst);
        }
    }

    /// A pooled buffer of exactly `size` bytes and `usage`, if there is one.
    fn take(&self, size: u64, usage: wgpu::BufferUsages) -> Option<wgpu::Buffer> {
        let mut free = self.free.lock().expect("pool");
        let index = free
            .iter()
            .position(|b| b.size() == size && b.usage() == usage)?;
        let buffer = free.swap_remove(index);
        self.pooled.fetch_sub(size, Ordering::SeqCst);
        Some(buffer)
    }

    fn track(self: &Arc<Self>, buffer: wgpu::Buffer, created: bool) -> Tracked {
        let bytes = buffer.size();
        let live = self.live.fetch_add(bytes, Ordering::SeqCst) + bytes;
        self.peak
            .fetch_max(live + self.pooled.load(Ordering::SeqCst), Ordering::SeqCst);
        if created {
            self.created.fetch_add(1, Ordering::SeqCst);
        }
        Tracked {
            buffer,
            ledger: Arc::clone(self),
            released: false,
        }
    }

    /// A buffer of `size` bytes with `usage`, not mapped (its contents are whatever a
    /// previous call left when it comes from the pool).
    pub fn create(
        self: &Arc<Self>,
        device: &wgpu::Device,
        label: &str,
        size: u64,
        usage: wgpu::BufferUsages,
    ) -> Tracked {
        if let Some(buffer) = self.take(size, usage) {
            return self.track(buffer, false);
        }
        let buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage,
            mapped_at_creation: false,
        });
        self.track(buffer, true)
    }

    /// A buffer holding `contents` (padded to 4 bytes), with `usage` (and `COPY_DST` on a
    /// pooled ledger, so that a reused buffer can be refilled).
    pub fn create_init(
        self: &Arc<Self>,
        device: &wgpu::Device,
        label: &str,
        contents: &[u8],
        usage: wgpu::BufferUsages,
    ) -> Tracked {
        let Some(queue) = &self.queue else {
            let buffer = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents,
                usage,
            });
            return self.track(buffer, true);
        };
        let usage = usage | wgpu::BufferUsages::COPY_DST;
        let size = (contents.len() as u64).next_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT);
        if let Some(buffer) = self.take(size, usage) {
            // Written before the commands of the next submission, after every earlier one.
            let mut padded = contents.to_vec();
            padded.resize(size as usize, 0);
            queue.write_buffer(&buffer, 0, &padded);
            return self.track(buffer, false);
        }
        let buffer = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents,
            usage,
        });
        self.track(buffer, true)
    }

    /// Takes back a buffer the library dropped: into the pool when it fits, else let go.
    fn give_back(&self, buffer: &wgpu::Buffer) {
        let size = buffer.size();
        self.live.fetch_sub(size, Ordering::SeqCst);
        let limit = self.pool_limit.load(Ordering::SeqCst);
        // A read-back buffer may still be mapped or waiting to be: never reused.
        let mappable = wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::MAP_WRITE;
        if limit == 0 || size == 0 || buffer.usage().intersects(mappable) {
            return;
        }
        let mut free = self.free.lock().expect("pool");
        if self.pooled.load(Ordering::SeqCst) + size <= limit {
            self.pooled.fetch_add(size, Ordering::SeqCst);
            free.push(buffer.clone());
        }
    }
}

/// A buffer the ledger counts until it is dropped (or handed over with `release`).
#[derive(Debug)]
pub struct Tracked {
    buffer: wgpu::Buffer,
    ledger: Arc<Ledger>,
    /// Handed to the application: never pooled.
    released: bool,
}

impl Tracked {
    /// Hands the buffer to someone outside the library: the ledger stops counting it and
    /// never reuses it.
    pub fn release(mut self) -> wgpu::Buffer {
        self.released = true;
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
        if self.released {
            self.ledger
                .live
                .fetch_sub(self.buffer.size(), Ordering::SeqCst);
        } else {
            self.ledger.give_back(&self.buffer);
        }
    }
}

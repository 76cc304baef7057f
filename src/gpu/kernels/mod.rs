//! One module per kernel family; each owns its pipeline and its dispatch arithmetic.
//! The helpers here are the plumbing they share.

pub mod ingest;
pub mod matmul;
pub mod pooling;
pub mod position;
pub mod softmax;

use std::sync::Arc;

use crate::gpu::memory::{Ledger, Tracked};
use crate::gpu::shaders::ShaderSource;
use crate::profile::{Clock, Step, StepTime};

/// The sizes of one forward pass, as the kernels see them (all fit in `u32`: the caller checks).
#[derive(Clone, Copy, Debug)]
pub struct ForwardShape {
    /// Images in the batch `b`.
    pub batch: u32,
    /// Tokens per image `n`.
    pub tokens: u32,
    /// Queries per image `m`.
    pub queries: u32,
    /// Token width `d`.
    pub width: u32,
    /// Projection width `d_c`.
    pub channels: u32,
    /// Grids in the layout.
    pub grid_count: u32,
}

/// Most workgroups one dispatch dimension may hold (WebGPU's default limit).
pub const MAX_GROUPS_PER_DIMENSION: u32 = 65_535;

/// Workgroup size of the element-wise kernels (their `workgroup_size` override's default).
pub const LINEAR_WORKGROUP: u32 = 256;

/// A compute pipeline for `source`'s `main`, with its bind group layout derived from the shader.
pub(crate) fn pipeline(device: &wgpu::Device, source: &ShaderSource) -> wgpu::ComputePipeline {
    pipeline_at(device, source, "main")
}

/// A compute pipeline for the entry point `entry` of `source`.
pub(crate) fn pipeline_at(
    device: &wgpu::Device,
    source: &ShaderSource,
    entry: &str,
) -> wgpu::ComputePipeline {
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(&source.label),
        source: wgpu::ShaderSource::Wgsl(source.code.as_str().into()),
    });
    device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(&source.label),
        layout: None,
        module: &module,
        entry_point: Some(entry),
        compilation_options: wgpu::PipelineCompilationOptions::default(),
        cache: None,
    })
}

/// A bound range of a buffer: the whole buffer, or `size` bytes from `offset` (a multiple of
/// the device's `min_storage_buffer_offset_alignment`).
#[derive(Clone, Copy, Debug)]
pub struct Slice<'a> {
    /// The buffer.
    pub buffer: &'a wgpu::Buffer,
    /// Bytes before the range.
    pub offset: u64,
    /// Bytes in the range; `None` for the rest of the buffer.
    pub size: Option<u64>,
}

impl<'a> Slice<'a> {
    /// The whole of `buffer`.
    pub fn whole(buffer: &'a wgpu::Buffer) -> Self {
        Slice {
            buffer,
            offset: 0,
            size: None,
        }
    }

    fn binding(self) -> wgpu::BindingResource<'a> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: self.buffer,
            offset: self.offset,
            size: self.size.and_then(std::num::NonZeroU64::new),
        })
    }
}

impl<'a> From<&'a wgpu::Buffer> for Slice<'a> {
    fn from(buffer: &'a wgpu::Buffer) -> Self {
        Slice::whole(buffer)
    }
}

/// How the passes of a run are timed.
enum Timer {
    /// Not at all.
    Off,
    /// Timestamps written at the start and end of each pass.
    Timestamps(wgpu::QuerySet),
    /// Each pass submitted alone and waited for, timed by the host clock.
    Wall(Vec<f64>),
}

/// Most passes one timed run may time (later ones run untimed).
const MAX_TIMED_PASSES: u32 = 64;

/// The command encoder a run's kernels record into, one compute pass per kernel, with the
/// steps recorded so far and, when profiling, their timer.
pub struct Passes<'a> {
    /// The device the passes run on.
    pub device: &'a wgpu::Device,
    queue: &'a wgpu::Queue,
    /// The encoder passes are recorded into (copies may be added to it too).
    pub encoder: wgpu::CommandEncoder,
    steps: Vec<Step>,
    timer: Timer,
    ledger: &'a Arc<Ledger>,
    /// The parameter buffers of the recorded passes, counted until the run is over.
    parameters: Vec<Tracked>,
    /// Where split-K products write their partial products, if the run has one.
    split_scratch: Option<wgpu::Buffer>,
}

impl<'a> Passes<'a> {
    /// An encoder for a run; with `profile`, passes are timed by timestamps where the device
    /// has `TIMESTAMP_QUERY` and by the host clock around each submission otherwise.
    pub fn new(
        device: &'a wgpu::Device,
        queue: &'a wgpu::Queue,
        ledger: &'a Arc<Ledger>,
        profile: bool,
    ) -> Self {
        let timer = if !profile {
            Timer::Off
        } else if device.features().contains(wgpu::Features::TIMESTAMP_QUERY) {
            Timer::Timestamps(device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("pass timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: 2 * MAX_TIMED_PASSES,
            }))
        } else {
            Timer::Wall(Vec::new())
        };
        Passes {
            device,
            queue,
            encoder: device.create_command_encoder(&Default::default()),
            steps: Vec::new(),
            timer,
            ledger,
            parameters: Vec::new(),
            split_scratch: None,
        }
    }

    /// Gives the run `scratch` for the partial products of split-K products (kept until
    /// the run is over).
    pub fn set_split_scratch(&mut self, scratch: Tracked) {
        self.split_scratch = Some((*scratch).clone());
        self.parameters.push(scratch);
    }

    /// The split-K scratch, if the run has one of at least `bytes`.
    pub fn split_scratch(&self, bytes: u64) -> Option<wgpu::Buffer> {
        self.split_scratch
            .as_ref()
            .filter(|scratch| scratch.size() >= bytes)
            .cloned()
    }

    /// Submits what is recorded and waits for the device (host-clock timing only).
    fn submit_and_wait(&mut self) -> Result<(), wgpu::PollError> {
        let encoder = std::mem::replace(
            &mut self.encoder,
            self.device.create_command_encoder(&Default::default()),
        );
        self.queue.submit([encoder.finish()]);
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
    }

    /// Records one pass of `step` running `pipeline` with `params` in a uniform buffer bound
    /// at 0 and `buffers` at 1, 2, ... of group 0.
    fn record<T: bytemuck::Pod>(
        &mut self,
        step: Step,
        pipeline: &wgpu::ComputePipeline,
        params: &T,
        buffers: &[Slice],
        groups: [u32; 3],
    ) {
        let params = self.ledger.create_init(
            self.device,
            "params",
            bytemuck::bytes_of(params),
            wgpu::BufferUsages::UNIFORM,
        );
        let entries: Vec<wgpu::BindGroupEntry> = std::iter::once(params.as_entire_binding())
            .chain(buffers.iter().map(|slice| slice.binding()))
            .enumerate()
            .map(|(binding, resource)| wgpu::BindGroupEntry {
                binding: binding as u32,
                resource,
            })
            .collect();
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        self.parameters.push(params);
        let wall = matches!(self.timer, Timer::Wall(_));
        // The host clock times this pass alone: what came before is finished first.
        let start = wall
            .then(|| {
                self.submit_and_wait()
                    .ok()
                    .map(|_| std::time::Instant::now())
            })
            .flatten();
        let index = self.steps.len() as u32;
        let timestamp_writes = match &self.timer {
            Timer::Timestamps(query_set) if index < MAX_TIMED_PASSES => {
                Some(wgpu::ComputePassTimestampWrites {
                    query_set,
                    beginning_of_pass_write_index: Some(2 * index),
                    end_of_pass_write_index: Some(2 * index + 1),
                })
            }
            _ => None,
        };
        {
            let mut pass = self
                .encoder
                .begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some(step.name),
                    timestamp_writes,
                });
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        }
        if wall {
            // One entry per pass, NaN when a wait failed, so times stay beside their steps.
            let finished = self.submit_and_wait().is_ok();
            let elapsed = match start {
                Some(start) if finished => start.elapsed().as_secs_f64(),
                _ => f64::NAN,
            };
            if let Timer::Wall(seconds) = &mut self.timer {
                seconds.push(elapsed);
            }
        }
        self.steps.push(step);
    }

    /// Ends recording: the encoder to submit, what reads the timings once it has run, and
    /// the parameter buffers (to keep until then).
    pub fn finish(mut self) -> (wgpu::CommandEncoder, PassTimings, Vec<Tracked>) {
        let timings = match self.timer {
            Timer::Off => PassTimings::Off,
            Timer::Wall(seconds) => PassTimings::Wall(
                self.steps
                    .iter()
                    .zip(seconds)
                    .map(|(step, seconds)| StepTime::of(step, seconds))
                    .collect(),
            ),
            Timer::Timestamps(query_set) => {
                let count = 2 * (self.steps.len() as u32).min(MAX_TIMED_PASSES);
                let size = (count as u64 * 8).next_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT);
                let resolved = self.ledger.create(
                    self.device,
                    "resolved timestamps",
                    size,
                    wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                );
                let staging = self.ledger.create(
                    self.device,
                    "timestamps read-back",
                    size,
                    wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                );
                self.encoder
                    .resolve_query_set(&query_set, 0..count, &resolved, 0);
                self.encoder
                    .copy_buffer_to_buffer(&resolved, 0, &staging, 0, None);
                self.parameters.push(resolved);
                PassTimings::Timestamps {
                    staging,
                    steps: std::mem::take(&mut self.steps),
                    period_ns: self.queue.get_timestamp_period() as f64,
                }
            }
        };
        (self.encoder, timings, self.parameters)
    }
}

/// The timings of a finished recording, to read once its submission has run.
pub enum PassTimings {
    /// Not profiled.
    Off,
    /// Host-clock seconds per pass, already measured.
    Wall(Vec<StepTime>),
    /// Timestamps to read back.
    Timestamps {
        /// Holds two u64 ticks per pass once the submission has run.
        staging: Tracked,
        /// The passes, in order.
        steps: Vec<Step>,
        /// Nanoseconds per tick.
        period_ns: f64,
    },
}

impl PassTimings {
    /// The clock the timings come from and the time of each step (`None` when not
    /// profiled). Reads the timestamps back, so call it after the submission.
    pub fn read(
        self,
        read: impl FnOnce(&wgpu::Buffer) -> crate::error::Result<Vec<u8>>,
    ) -> crate::error::Result<Option<(Clock, Vec<StepTime>)>> {
        match self {
            PassTimings::Off => Ok(None),
            PassTimings::Wall(steps) => Ok(Some((Clock::HostPerPass, steps))),
            PassTimings::Timestamps {
                staging,
                steps,
                period_ns,
            } => {
                let bytes = read(&staging)?;
                let ticks: Vec<u64> = bytes
                    .chunks_exact(8)
                    .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
                    .collect();
                let times = steps
                    .iter()
                    .zip(ticks.chunks_exact(2))
                    .map(|(step, pair)| {
                        let seconds = pair[1].saturating_sub(pair[0]) as f64 * period_ns * 1e-9;
                        StepTime::of(step, seconds)
                    })
                    .collect();
                Ok(Some((Clock::GpuTimestamps, times)))
            }
        }
    }
}

/// Records one compute pass of `step` running `pipeline` with `params` (a uniform) bound at
/// 0 and `buffers` at 1, 2, ... of group 0.
pub(crate) fn dispatch<T: bytemuck::Pod>(
    passes: &mut Passes,
    step: Step,
    pipeline: &wgpu::ComputePipeline,
    params: &T,
    buffers: &[Slice],
    groups: [u32; 3],
) {
    passes.record(step, pipeline, params, buffers, groups);
}

/// Workgroups covering `count` items of `per_group` each, folded into x and y so that neither
/// passes the per-dimension limit (the kernels rebuild the linear index from both).
pub(crate) fn linear_groups(count: u32, per_group: u32) -> [u32; 3] {
    let total = count.div_ceil(per_group).max(1);
    let x = total.min(MAX_GROUPS_PER_DIMENSION);
    [x, total.div_ceil(x), 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_groups_cover_every_item() {
        for count in [1u32, 255, 256, 257, 70_000 * 256 + 3] {
            let [x, y, z] = linear_groups(count, 256);
            assert!(x <= MAX_GROUPS_PER_DIMENSION && y <= MAX_GROUPS_PER_DIMENSION && z == 1);
            assert!(x as u64 * y as u64 * 256 >= count as u64);
        }
    }
}

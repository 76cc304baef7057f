//! Bringing a call's outputs back: blocking, as a `Future`, or handed over as device buffers;
//! and the one read-back path (`copy_to_staging`, `read_staging`) the methods' reduction
//! shares.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use super::{GpuEngine, GpuOutput};
use crate::error::{Error, Result};
use crate::gpu::buffers::{copy_to_staging, elem_values, read_staging};
use crate::gpu::kernels::PassTimings;
use crate::gpu::memory::Tracked;
use crate::gpu::plan::{CallPlan, Group};
use crate::options::{Elem, Options};

impl GpuEngine {
    /// Runs `groups` in one submission and waits for the outputs on the host.
    pub fn run(&self, groups: &[Group], options: &Options) -> Result<Vec<GpuOutput>> {
        let submitted = self.submit(groups, options, true)?;
        let device = &self.context.device;
        let outputs = outputs_of(submitted, self.precision.elem(), |staging| {
            read_staging(device, staging)
        });
        self.context.check_alive()?;
        outputs
    }

    /// Runs `groups` in one submission; the outputs arrive on the host when the returned
    /// future resolves.
    pub fn run_async(&self, groups: &[Group], options: &Options) -> Result<PendingOutput> {
        let submitted = self.submit(groups, options, true)?;
        let state = Arc::new(Mutex::new(MapState::default()));
        let (tokens, projection) = submitted.staging.as_ref().expect("read-back staging");
        let mut stagings = vec![tokens];
        stagings.extend(projection.iter());
        if let PassTimings::Timestamps { staging, .. } = &submitted.timings {
            stagings.push(staging);
        }
        state.lock().expect("map state").outstanding = stagings.len();
        for staging in stagings {
            let state = Arc::clone(&state);
            staging
                .slice(..)
                .map_async(wgpu::MapMode::Read, move |result| {
                    let mut state = state.lock().expect("map state");
                    state.outstanding -= 1;
                    if let Err(error) = result {
                        state.failure = Some(error.to_string());
                    }
                    if let Some(waker) = state.waker.take() {
                        waker.wake();
                    }
                });
        }
        Ok(PendingOutput {
            device: self.context.device.clone(),
            submitted: Some(submitted),
            elem: self.precision.elem(),
            state,
            waiting: false,
        })
    }

    /// Runs one group in one submission and hands its outputs over as device buffers,
    /// without waiting.
    pub fn run_resident(
        &self,
        group: &Group,
        options: &Options,
    ) -> Result<(wgpu::Buffer, Option<wgpu::Buffer>, wgpu::SubmissionIndex)> {
        let submitted = self.submit(std::slice::from_ref(group), options, false)?;
        Ok((
            submitted.tokens.release(),
            submitted.projection.map(Tracked::release),
            submitted.index,
        ))
    }

    /// The bytes `buffer` (with `COPY_SRC`) holds, copied through a read-back buffer; waits
    /// for the device.
    pub fn read_buffer(&self, buffer: &wgpu::Buffer) -> Result<Vec<u8>> {
        let device = &self.context.device;
        let mut encoder = device.create_command_encoder(&Default::default());
        let staging = copy_to_staging(&self.ledger, device, &mut encoder, buffer);
        self.context.queue.submit([encoder.finish()]);
        read_staging(device, &staging)
    }
}

/// A submitted call: its outputs, what reads them back, what must live until it is done.
pub(super) struct Submitted {
    pub(super) tokens: Tracked,
    pub(super) projection: Option<Tracked>,
    pub(super) staging: Option<(Tracked, Option<Tracked>)>,
    pub(super) timings: PassTimings,
    /// Buffers the submission uses, kept (and counted) until it has run.
    pub(super) _in_use: Vec<Tracked>,
    pub(super) index: wgpu::SubmissionIndex,
    pub(super) plan: CallPlan,
}

/// A submitted call whose outputs are on their way to the host: a `Future` that resolves when
/// the device has finished and the outputs are mapped.
pub struct PendingOutput {
    device: wgpu::Device,
    submitted: Option<Submitted>,
    elem: Elem,
    state: Arc<Mutex<MapState>>,
    waiting: bool,
}

#[derive(Default)]
struct MapState {
    /// Read-backs still to be mapped.
    outstanding: usize,
    failure: Option<String>,
    waker: Option<Waker>,
}

impl Future for PendingOutput {
    type Output = Result<Vec<GpuOutput>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let _ = self.device.poll(wgpu::PollType::Poll);
        {
            let mut state = self.state.lock().expect("map state");
            if let Some(failure) = state.failure.take() {
                return Poll::Ready(Err(Error::Gpu(format!(
                    "reading results back failed: {failure}"
                ))));
            }
            if state.outstanding > 0 {
                state.waker = Some(cx.waker().clone());
                drop(state);
                if !self.waiting {
                    // One thread waits for the submission, which runs the map callbacks,
                    // which wake this future.
                    self.waiting = true;
                    let device = self.device.clone();
                    let index = self.submitted.as_ref().map(|s| s.index.clone());
                    std::thread::spawn(move || {
                        let _ = device.poll(wgpu::PollType::Wait {
                            submission_index: index,
                            timeout: None,
                        });
                    });
                }
                return Poll::Pending;
            }
        }
        let submitted = self.submitted.take().expect("polled after completion");
        Poll::Ready(outputs_of(submitted, self.elem, |staging| {
            let bytes = staging
                .slice(..)
                .get_mapped_range()
                .map_err(|e| Error::Gpu(format!("reading results back failed: {e}")))?
                .to_vec();
            staging.unmap();
            Ok(bytes)
        }))
    }
}

/// Splits the read-back outputs of a call into one `GpuOutput` per group.
fn outputs_of(
    submitted: Submitted,
    elem: Elem,
    read: impl Fn(&wgpu::Buffer) -> Result<Vec<u8>>,
) -> Result<Vec<GpuOutput>> {
    let (tokens_staging, projection_staging) = submitted
        .staging
        .as_ref()
        .expect("a read-back call has staging buffers");
    let tokens = elem_values(&read(tokens_staging)?, elem, submitted.plan.tokens_len);
    let projection = match projection_staging {
        Some(staging) => Some(elem_values(
            &read(staging)?,
            Elem::F32,
            submitted.plan.projection_len,
        )),
        None => None,
    };
    let mut timings = submitted.timings.read(&read)?;
    Ok(submitted
        .plan
        .groups
        .iter()
        .map(|group| {
            let count = group.batch * group.queries * group.width;
            GpuOutput {
                tokens: tokens[group.tokens_at..group.tokens_at + count].to_vec(),
                projection: projection.as_ref().map(|p| {
                    p[group.projection_at
                        ..group.projection_at + group.batch * group.queries * group.tokens]
                        .to_vec()
                }),
                timings: timings.take(),
            }
        })
        .collect())
}

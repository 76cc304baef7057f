//! The compressor: weights checked once, a backend chosen once, any number of calls.

use crate::backend::{open_backend, Opened, REFERENCE_DEVICE};
use crate::cpu::{self, cpu_device, CpuWeights};
use crate::error::{Error, Result};
use crate::gpu::buffers::elem_values;
use crate::gpu::context::GpuContext;
use crate::gpu::engine::readback::PendingOutput;
use crate::gpu::engine::{GpuEngine, GpuOutput};
use crate::gpu::memory::MemoryCount;
use crate::gpu::plan::Group;
use crate::gpu::resident::{GpuCompressed, GpuTokens, Tokens};
use crate::layout::{Layout, Queries};
use crate::options::{Backend, Elem, Options, Precision};
use crate::profile::{Clock, Profile, StepTime};
use crate::reference;
use crate::tensor::{check_computed, host_bytes, Features, HostTokens};
use crate::weights::PMeta;

/// The result of one call.
#[derive(Clone, Debug)]
pub struct Compressed {
    /// Reduced tokens `Y`, `batch x m x d`, row-major.
    pub tokens: Vec<f32>,
    /// The compression projection `P`, `batch x m x n`, when asked for.
    pub projection: Option<Vec<f32>>,
    /// Images in the batch.
    pub batch: usize,
    /// Tokens per input image `n`.
    pub input_tokens: usize,
    /// Token width `d`.
    pub width: usize,
    /// The query grids; `queries.count` is `m`.
    pub queries: Queries,
    /// The time of each step, when `Options::profile` asked for it.
    pub profile: Option<Profile>,
}

enum Engine {
    Reference,
    Cpu(CpuWeights),
    Gpu(Box<GpuEngine>),
}

/// P_meta weights bound to a backend, ready to compress any number of batches.
pub struct Compressor {
    weights: PMeta,
    precision: Precision,
    engine: Engine,
    /// Why `Backend::Auto` chose what it chose, for people.
    choice: Option<String>,
}

impl Compressor {
    /// Opens `backend` (an adapter whose name contains `adapter`, if given) and prepares the
    /// weights at `precision`. The CPU backends take f32 only.
    pub fn new(
        weights: PMeta,
        backend: Backend,
        adapter: Option<&str>,
        precision: Precision,
    ) -> Result<Self> {
        let (opened, choice) = open_backend(backend, adapter, precision)?;
        let engine = match opened {
            Opened::Reference => Engine::Reference,
            Opened::Cpu => Engine::Cpu(CpuWeights::new(&weights, precision)),
            Opened::Gpu(context) => {
                let mut compressor = Compressor::on_context(weights, *context, precision)?;
                compressor.choice = choice;
                return Ok(compressor);
            }
        };
        Ok(Compressor {
            weights,
            precision,
            engine,
            choice,
        })
    }

    /// Prepares the weights at `precision` on a device already open (several compressors
    /// may share one context).
    pub fn on_context(weights: PMeta, context: GpuContext, precision: Precision) -> Result<Self> {
        let engine = GpuEngine::new(context, &weights, precision)?;
        Ok(Compressor {
            weights,
            precision,
            engine: Engine::Gpu(Box::new(engine)),
            choice: None,
        })
    }

    /// Why `Backend::Auto` chose this device, if it was asked to choose.
    pub fn choice(&self) -> Option<&str> {
        self.choice.as_deref()
    }

    /// What runs the pass, for people: the adapter and API, or the CPU path.
    pub fn device(&self) -> String {
        match &self.engine {
            Engine::Reference => REFERENCE_DEVICE.to_string(),
            Engine::Cpu(_) => cpu_device(self.precision),
            Engine::Gpu(engine) => engine.context().describe(self.precision),
        }
    }

    /// The device the compressor runs on (`None` on a CPU backend).
    pub fn context(&self) -> Option<&GpuContext> {
        match &self.engine {
            Engine::Gpu(engine) => Some(engine.context()),
            _ => None,
        }
    }

    /// Whether it runs the float64 reference.
    pub(crate) fn is_reference(&self) -> bool {
        matches!(self.engine, Engine::Reference)
    }

    /// The storage precision of its GPU buffers.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The weights.
    pub fn weights(&self) -> &PMeta {
        &self.weights
    }

    /// Compresses every image of `features` (all sharing `layout`) to `m` tokens each.
    pub fn compress(
        &self,
        features: &Features,
        layout: &Layout,
        options: &Options,
    ) -> Result<Compressed> {
        match &self.engine {
            Engine::Gpu(_) => self.compress_tokens(features.into(), layout, options),
            _ => {
                let queries = self.check_groups(&[(features.into(), layout)], options)?;
                let queries = queries.into_iter().next().expect("one group");
                self.compress_on_cpu(features.into(), layout, queries, options)
            }
        }
    }

    /// Compresses `tokens` (f32, f16 or bf16 in host memory, or a buffer on this
    /// compressor's device) sharing `layout`, and waits for the reduced tokens on the host.
    pub fn compress_tokens(
        &self,
        tokens: Tokens,
        layout: &Layout,
        options: &Options,
    ) -> Result<Compressed> {
        let mut results = self.compress_batch(&[(tokens, layout)], options)?;
        Ok(results.pop().expect("one result per group"))
    }

    /// Compresses the `features` tensor of a safetensors input file (SPEC section 3), on the
    /// layout of its `grids` metadata, or one square grid without it.
    pub fn compress_file(&self, path: &std::path::Path, options: &Options) -> Result<Compressed> {
        let input = crate::files::read_input(path)?;
        let layout = match &input.grids {
            Some(grids) => Layout::new(input.token_count(), grids.clone())?,
            None => Layout::square(input.token_count())?,
        };
        self.compress_tokens(Tokens::Host(input.tokens()), &layout, options)
    }

    /// Compresses several groups of images, each with its own layout (anyres grids of
    /// different shapes, say), in one queue submission on the GPU; one result per group, in
    /// order. Equal to compressing each group alone.
    pub fn compress_batch(
        &self,
        groups: &[(Tokens, &Layout)],
        options: &Options,
    ) -> Result<Vec<Compressed>> {
        let started = std::time::Instant::now();
        let queries = self.check_groups(groups, options)?;
        match &self.engine {
            Engine::Gpu(engine) => {
                let plan_groups = plan_groups(groups, &queries);
                if self.precision.elem() == Elem::F16 {
                    for (tokens, _) in groups {
                        if let Tokens::Host(host) = tokens {
                            host.values().check_fits_f16("--precision f16: features")?;
                        }
                    }
                }
                let outputs = engine.run(&plan_groups, options)?;
                finish(group_shapes(groups, queries), outputs, options, started)
            }
            _ => groups
                .iter()
                .zip(queries)
                .map(|((tokens, layout), queries)| match tokens {
                    Tokens::Host(host) => self.compress_on_cpu(*host, layout, queries, options),
                    Tokens::Gpu(_) => Err(self.needs_gpu()),
                })
                .collect(),
        }
    }

    /// Starts compressing `groups` and returns at once; the future resolves to the results
    /// when the device is done (it needs no particular executor: a helper thread waits for the
    /// GPU and wakes it). On the CPU backends the work is done before this returns.
    pub fn compress_async(
        &self,
        groups: &[(Tokens, &Layout)],
        options: &Options,
    ) -> Result<CompressFuture> {
        let started = std::time::Instant::now();
        let queries = self.check_groups(groups, options)?;
        let Engine::Gpu(engine) = &self.engine else {
            return Ok(CompressFuture {
                state: FutureState::Ready(Some(self.compress_batch(groups, options))),
            });
        };
        let plan_groups = plan_groups(groups, &queries);
        let pending = engine.run_async(&plan_groups, options)?;
        Ok(CompressFuture {
            state: FutureState::Gpu {
                pending: Box::new(pending),
                shapes: group_shapes(groups, queries),
                options: *options,
                started,
            },
        })
    }

    /// Compresses tokens already on the device and hands the reduced tokens back as a device
    /// buffer, without a copy through the host and without waiting: the application's next
    /// submission on the same queue sees them. GPU backends only.
    pub fn compress_on_gpu(
        &self,
        tokens: GpuTokens,
        layout: &Layout,
        options: &Options,
    ) -> Result<GpuCompressed> {
        let Engine::Gpu(engine) = &self.engine else {
            return Err(self.needs_gpu());
        };
        let groups = [(Tokens::Gpu(tokens), layout)];
        let queries = self
            .check_groups(&groups, options)?
            .pop()
            .expect("one group");
        let plan_groups = plan_groups(&groups, std::slice::from_ref(&queries));
        let (buffer, projection, submission) = engine.run_resident(&plan_groups[0], options)?;
        Ok(GpuCompressed {
            tokens: buffer,
            dtype: self.precision.elem().dtype(),
            projection,
            batch: tokens.batch,
            input_tokens: tokens.tokens,
            width: tokens.width,
            queries,
            submission,
        })
    }

    /// Copies the outputs of a GPU-resident call to the host (waits for the device).
    pub fn read_back(&self, output: &GpuCompressed) -> Result<Compressed> {
        let Engine::Gpu(engine) = &self.engine else {
            return Err(Error::Unsupported(
                "read_back is for outputs of compress_on_gpu".to_string(),
            ));
        };
        let m = output.queries.count;
        let (b, n, d) = (output.batch, output.input_tokens, output.width);
        let tokens = elem_values(
            &engine.read_buffer(&output.tokens)?,
            self.precision.elem(),
            b * m * d,
        );
        let projection = match &output.projection {
            Some(buffer) => Some(elem_values(
                &engine.read_buffer(buffer)?,
                Elem::F32,
                b * m * n,
            )),
            None => None,
        };
        Ok(Compressed {
            tokens,
            projection,
            batch: b,
            input_tokens: n,
            width: d,
            queries: output.queries.clone(),
            profile: None,
        })
    }

    /// GPU memory the compressor holds between calls, in bytes: its weights and the free
    /// buffers it keeps for reuse (see `set_pool_limit`, `trim`); 0 on the CPU backends.
    pub fn held_bytes(&self) -> u64 {
        match &self.engine {
            Engine::Gpu(engine) => engine.weight_bytes() + engine.ledger().count().pooled_bytes,
            _ => 0,
        }
    }

    /// Sets the most bytes of free buffers the compressor keeps between calls for reuse
    /// (default 256 MiB; 0 keeps none), letting go of what it keeps beyond that.
    pub fn set_pool_limit(&self, bytes: u64) {
        if let Engine::Gpu(engine) = &self.engine {
            engine.ledger().set_pool_limit(bytes);
        }
    }

    /// Lets go of every buffer kept for reuse: the compressor then holds only its weights.
    pub fn trim(&self) {
        if let Engine::Gpu(engine) = &self.engine {
            engine.ledger().trim();
        }
    }

    /// Every buffer the compressor has counted: alive now (weights and calls in progress),
    /// the most alive at once, and how many were made. `None` on the CPU backends.
    pub fn memory(&self) -> Option<MemoryCount> {
        match &self.engine {
            Engine::Gpu(engine) => Some(engine.ledger().count()),
            _ => None,
        }
    }

    /// Bytes of GPU memory a blocking call on `groups` with `options` would allocate (besides
    /// what the compressor holds, and 32 bytes of parameters per kernel). Fails as the call
    /// would: when it cannot fit. 0 on the CPU backends.
    pub fn call_bytes(&self, groups: &[(Tokens, &Layout)], options: &Options) -> Result<u64> {
        let queries = self.check_groups(groups, options)?;
        match &self.engine {
            Engine::Gpu(engine) => {
                let plan_groups = plan_groups(groups, &queries);
                Ok(engine.plan(&plan_groups, options, true)?.bytes)
            }
            _ => Ok(0),
        }
    }

    /// Sets the most bytes one call may allocate on the GPU (`None`: no budget, only the
    /// device's limits); a call over it fails with `Error::TooLarge` before any device work.
    pub fn set_memory_budget(&self, bytes: Option<u64>) {
        if let Engine::Gpu(engine) = &self.engine {
            engine.set_budget(bytes);
        }
    }

    /// Why the device was lost, once it is: every later call fails with
    /// `Error::DeviceLost`, and a new compressor must be built.
    pub fn device_lost(&self) -> Option<String> {
        match &self.engine {
            Engine::Gpu(engine) => engine.context().lost(),
            _ => None,
        }
    }

    /// The error for GPU-resident tokens on a CPU backend.
    fn needs_gpu(&self) -> Error {
        Error::Unsupported(format!(
            "GPU-resident tokens need a GPU backend; this compressor runs on {}",
            self.device()
        ))
    }

    /// Checks each group against the weights and its layout; the queries of each.
    fn check_groups(
        &self,
        groups: &[(Tokens, &Layout)],
        options: &Options,
    ) -> Result<Vec<Queries>> {
        if groups.is_empty() {
            return Err(Error::InvalidArgument(
                "a batch of 0 groups; expected at least one".to_string(),
            ));
        }
        groups
            .iter()
            .map(|(tokens, layout)| {
                let (_, n, d) = tokens.shape();
                if d != self.weights.width() {
                    return Err(Error::InvalidTensor(format!(
                        "features have width d = {d}; the weights expect d = {}",
                        self.weights.width()
                    )));
                }
                layout.check_tokens(n)?;
                Ok(layout.queries(options.keep))
            })
            .collect()
    }

    /// One group on a CPU backend.
    fn compress_on_cpu(
        &self,
        features: HostTokens,
        layout: &Layout,
        queries: Queries,
        options: &Options,
    ) -> Result<Compressed> {
        let started = std::time::Instant::now();
        let (tokens, projection, timings) = match &self.engine {
            Engine::Reference => {
                // Per image: S and P (m x n) and Xp (n x d) in float64.
                let (n, d) = (features.tokens(), features.width());
                host_bytes("the float64 reference's scores", &[queries.count, n], 16)?;
                host_bytes("the float64 reference's tokens", &[n, d], 8)?;
                let result = reference::forward(
                    &features.to_features(),
                    &self.weights,
                    layout,
                    &queries,
                    options.scope,
                );
                let narrow = |values: Vec<f64>| values.into_iter().map(|v| v as f32).collect();
                (
                    narrow(result.tokens),
                    options.save_projection.then(|| narrow(result.projection)),
                    None,
                )
            }
            Engine::Cpu(prepared) => {
                let call = cpu::Call {
                    weights: &self.weights,
                    prepared,
                    layout,
                    queries: &queries,
                    scope: options.scope,
                    association: options.association,
                };
                let (tokens, projection) = cpu::forward(features, &call, options.save_projection)?;
                let seconds = started.elapsed().as_secs_f64();
                let step =
                    cpu::forward_step(features, &self.weights, queries.count, options.association);
                (
                    tokens,
                    projection,
                    Some((Clock::HostPerCall, vec![StepTime::of(&step, seconds)])),
                )
            }
            Engine::Gpu(_) => return self.compress_tokens(Tokens::Host(features), layout, options),
        };
        check_computed("the reduced tokens", &tokens)?;
        if let Some(projection) = &projection {
            check_computed("P", projection)?;
        }
        let call_seconds = started.elapsed().as_secs_f64();
        Ok(Compressed {
            tokens,
            projection,
            batch: features.batch(),
            input_tokens: features.tokens(),
            width: features.width(),
            queries,
            profile: profile_of(timings, options, call_seconds),
        })
    }
}

/// The engine's view of a call's groups.
fn plan_groups<'a>(groups: &[(Tokens<'a>, &'a Layout)], queries: &'a [Queries]) -> Vec<Group<'a>> {
    groups
        .iter()
        .zip(queries)
        .map(|((tokens, layout), queries)| Group {
            source: *tokens,
            layout,
            queries,
        })
        .collect()
}

/// The profile a call hands back, if asked for and timed.
fn profile_of(
    timings: Option<(Clock, Vec<StepTime>)>,
    options: &Options,
    call_seconds: f64,
) -> Option<Profile> {
    match timings {
        Some((clock, steps)) if options.profile => Some(Profile {
            clock,
            steps,
            call_seconds,
        }),
        _ => None,
    }
}

/// Each group's images, tokens per image and width, with its queries: what a result needs
/// besides the engine's outputs.
fn group_shapes(
    groups: &[(Tokens, &Layout)],
    queries: Vec<Queries>,
) -> Vec<(usize, usize, usize, Queries)> {
    groups
        .iter()
        .zip(queries)
        .map(|((tokens, _), queries)| {
            let (batch, n, d) = tokens.shape();
            (batch, n, d, queries)
        })
        .collect()
}

/// One `Compressed` per group from the engine's outputs.
fn finish(
    shapes: Vec<(usize, usize, usize, Queries)>,
    outputs: Vec<GpuOutput>,
    options: &Options,
    started: std::time::Instant,
) -> Result<Vec<Compressed>> {
    let call_seconds = started.elapsed().as_secs_f64();
    shapes
        .into_iter()
        .zip(outputs)
        .map(|((batch, n, d, queries), output)| {
            check_computed("the reduced tokens", &output.tokens)?;
            if let Some(projection) = &output.projection {
                check_computed("P", projection)?;
            }
            Ok(Compressed {
                tokens: output.tokens,
                projection: output.projection,
                batch,
                input_tokens: n,
                width: d,
                queries,
                profile: profile_of(output.timings, options, call_seconds),
            })
        })
        .collect()
}

/// A call in progress (`Compressor::compress_async`): resolves to one result per group.
pub struct CompressFuture {
    state: FutureState,
}

enum FutureState {
    Ready(Option<Result<Vec<Compressed>>>),
    Gpu {
        pending: Box<PendingOutput>,
        shapes: Vec<(usize, usize, usize, Queries)>,
        options: Options,
        started: std::time::Instant,
    },
}

impl std::future::Future for CompressFuture {
    type Output = Result<Vec<Compressed>>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match &mut self.state {
            FutureState::Ready(result) => {
                std::task::Poll::Ready(result.take().expect("polled after completion"))
            }
            FutureState::Gpu {
                pending,
                shapes,
                options,
                started,
            } => match std::pin::Pin::new(pending.as_mut()).poll(cx) {
                std::task::Poll::Pending => std::task::Poll::Pending,
                std::task::Poll::Ready(outputs) => {
                    std::task::Poll::Ready(outputs.and_then(|outputs| {
                        finish(std::mem::take(shapes), outputs, options, *started)
                    }))
                }
            },
        }
    }
}

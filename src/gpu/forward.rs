//! The forward pass of SPEC section 4 on the GPU: weights uploaded once, kernels in spec order,
//! every group and chunk of a call recorded into one command encoder and one queue submission.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use super::buffers::{
    elem_bytes, elem_values, padded_size, read_staging, staging_for, storage_output, storage_with,
};
use super::context::GpuContext;
use super::memory::{Ledger, Tracked, DEFAULT_POOL_LIMIT};
use super::plan::{
    pieces, plan, CallPlan, Device, Group, GroupPlan, InputPath, Products, ScoresPath, Split, Wants,
};
use crate::compress::{Association, Options, Precision, Tokens};
use crate::error::{Error, Result};
use crate::kernels::ingest::Ingest;
use crate::kernels::matmul::{Matmul, MatmulVariant, Product};
use crate::kernels::pooling::Pooling;
use crate::kernels::position::{
    pooled_query_term, project_table, samples, PerLayout, Position, Sample,
};
use crate::kernels::softmax::Softmax;
use crate::kernels::{ForwardShape, PassTimings, Passes, Slice, Step};
use crate::profile::{Clock, StepTime};
use crate::shaders::{Elem, KernelSources, ShaderSource};
use crate::weights::PMeta;

struct Kernels {
    ingest: Ingest,
    position: Position,
    pooling: Pooling,
    queries: Matmul,
    keys: Matmul,
    scores: Matmul,
    softmax: Softmax,
    reduction: Matmul,
}

struct Weights {
    /// `w_q diag(omega) / sqrt(d_c)` in f32, so that `Q_in` times it is the scaled query
    /// `Q'` of step 5 (f32 keeps a large omega from overflowing f16).
    w_q_scaled: Tracked,
    w_k: Tracked,
    /// The position table projected once (see `kernels::position`), if the weights have one.
    table: Option<ProjectedTable>,
    width: usize,
    channels: usize,
}

/// The position table `T` (`gh x gw x d`) as the forward pass uses it: `T w_k` on the device
/// (resized onto the tokens, it is `E w_k`) and `T w_q'` on the host (resized and pooled, it
/// is what `E` adds to the scaled queries), both `gh x gw x d_c`.
struct ProjectedTable {
    keys: Tracked,
    queries: Vec<f32>,
    height: usize,
    width: usize,
    /// `pool(resize(T w_q'))` for recent layouts.
    query_terms: PerLayout<Vec<f32>>,
}

/// The GPU forward pass for one set of weights at one precision.
pub struct GpuEngine {
    context: GpuContext,
    precision: Precision,
    kernels: Kernels,
    weights: Weights,
    ledger: Arc<Ledger>,
    /// Bytes of the weights on the device.
    weight_bytes: u64,
    /// Most bytes one call may allocate, if set.
    budget: Mutex<Option<u64>>,
}

/// What a GPU run hands back for one group: `Y` (`b x m x d`) and, when asked, `P`
/// (`b x m x n`) and the time of each kernel.
pub struct GpuOutput {
    /// Reduced tokens, widened to f32.
    pub tokens: Vec<f32>,
    /// The compression projection.
    pub projection: Option<Vec<f32>>,
    /// The clock and the time of each kernel, when profiling was asked for (the call's
    /// passes, on the first group only).
    pub timings: Option<(Clock, Vec<StepTime>)>,
}

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

/// `w_q diag(omega) / sqrt(d_c)`, row-major `d x d_c`, in f32.
fn scaled_query_weights(weights: &PMeta) -> Vec<f32> {
    let c = weights.channels();
    let scale = 1.0 / (c as f64).sqrt();
    let factors: Vec<f64> = weights.omega().iter().map(|&w| w as f64 * scale).collect();
    weights
        .w_q()
        .chunks_exact(c)
        .flat_map(|row| {
            row.iter()
                .zip(&factors)
                .map(|(&w, f)| (w as f64 * f) as f32)
        })
        .collect()
}

/// A step named `name` with the cost of `product` at the given element sizes.
fn product_step(name: &'static str, product: &Product, sizes: (usize, usize, usize)) -> Step {
    Step {
        name,
        flops: product.flops(),
        bytes: product.bytes(sizes.0, sizes.1, sizes.2),
    }
}

impl GpuEngine {
    /// Builds the pipelines and uploads the weights.
    pub fn new(context: GpuContext, weights: &PMeta, precision: Precision) -> Result<Self> {
        context.check_alive()?;
        context.check_precision(precision)?;
        let elem = precision.elem();
        let table_cells = weights.position().map_or(0, |t| t.height * t.width);
        let limit = context.binding_limit();
        for (name, count, size) in [
            ("w_q", weights.w_q().len(), 4),
            (
                "pos_embed w_k",
                table_cells * weights.channels(),
                precision.size(),
            ),
        ] {
            let bytes = padded_size(count, size);
            if bytes > limit {
                return Err(Error::TooLarge(format!(
                    "{name} needs {bytes} bytes in one storage binding; adapter {} allows {limit}",
                    context.adapter.name
                )));
            }
        }
        let ledger = Ledger::pooled(context.queue.clone(), DEFAULT_POOL_LIMIT);
        let device = &context.device;
        let sources = KernelSources::for_precision(precision);
        let (kernels, uploaded) = scoped(device, "building the kernels", || {
            // Products with the same shader (all four at f32) share their pipelines. Those
            // that write f32 may split (see `plan::Products`): the queries and the scores,
            // and at f32 the keys and the reduction too.
            let mut built: Vec<(String, Matmul)> = Vec::new();
            let mut matmul = |source: &ShaderSource, writes_f32: bool| {
                if let Some((_, matmul)) = built.iter().find(|(code, _)| *code == source.code) {
                    return matmul.clone();
                }
                let split_sum = writes_f32.then_some(&sources.split_sum);
                let matmul = Matmul::new(device, source, split_sum);
                built.push((source.code.clone(), matmul.clone()));
                matmul
            };
            let f32_storage = precision == Precision::F32;
            let kernels = Kernels {
                ingest: Ingest::new(device, &sources.ingest),
                position: Position::new(device, &sources.position),
                pooling: Pooling::new(device, &sources.pooling),
                queries: matmul(&sources.queries, true),
                keys: matmul(&sources.keys, f32_storage),
                scores: matmul(&sources.scores, true),
                softmax: Softmax::new(device, &sources.softmax),
                reduction: matmul(&sources.reduction, f32_storage),
            };
            let w_q_scaled = scaled_query_weights(weights);
            let (d, c) = (weights.width(), weights.channels());
            let table = weights.position().map(|table| ProjectedTable {
                keys: storage_with(
                    &ledger,
                    device,
                    "pos_embed w_k",
                    &elem_bytes(&project_table(&table.values, d, weights.w_k(), c), elem),
                ),
                queries: project_table(&table.values, d, &w_q_scaled, c),
                height: table.height,
                width: table.width,
                query_terms: PerLayout::default(),
            });
            let uploaded = Weights {
                w_q_scaled: storage_with(
                    &ledger,
                    device,
                    "w_q diag(omega) / sqrt(d_c)",
                    bytemuck::cast_slice(&w_q_scaled),
                ),
                w_k: storage_with(&ledger, device, "w_k", &elem_bytes(weights.w_k(), elem)),
                table,
                width: weights.width(),
                channels: weights.channels(),
            };
            (kernels, uploaded)
        })?;
        let weight_bytes = ledger.count().live_bytes;
        Ok(GpuEngine {
            context,
            precision,
            kernels,
            weights: uploaded,
            ledger,
            weight_bytes,
            budget: Mutex::new(None),
        })
    }

    /// The context the engine runs on.
    pub fn context(&self) -> &GpuContext {
        &self.context
    }

    /// The ledger every buffer of the engine is counted in.
    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    /// Bytes of the weights on the device (what the engine holds between calls).
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }

    /// Sets (or clears) the most bytes one call may allocate.
    pub fn set_budget(&self, budget: Option<u64>) {
        *self.budget.lock().expect("budget") = budget;
    }

    /// Plans a call: its chunks and the bytes it will allocate. Fails when it cannot fit.
    pub fn plan(&self, groups: &[Group], options: &Options, readback: bool) -> Result<CallPlan> {
        let limits = &self.context.limits;
        let device = Device {
            binding_limit: self.context.binding_limit(),
            buffer_limit: limits.max_buffer_size,
            offset_alignment: limits.min_storage_buffer_offset_alignment as u64,
            precision: self.precision,
            channels: self.weights.channels,
            table: self.weights.table.is_some(),
            budget: *self.budget.lock().expect("budget"),
        };
        let wants = Wants {
            projection: options.save_projection,
            readback,
            kernels: options.kernels,
            association: options.association,
            binding_limit: options.max_binding_bytes,
            split: options.split_k.resolve(self.context.is_software()),
        };
        for group in groups {
            debug_assert_eq!(group.source.shape().2, self.weights.width);
        }
        plan(groups, &device, &wants)
    }

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
        let staging = staging_for(&self.ledger, device, buffer);
        let mut encoder = device.create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(buffer, 0, &staging, 0, None);
        self.context.queue.submit([encoder.finish()]);
        read_staging(device, &staging)
    }

    /// Records every group and chunk of a call into one encoder and submits it.
    fn submit(&self, groups: &[Group], options: &Options, readback: bool) -> Result<Submitted> {
        self.context.check_alive()?;
        let plan = self.plan(groups, options, readback)?;
        let device = &self.context.device;
        let ledger = &self.ledger;
        let e = self.precision.size();
        let poison = options.poison;
        let result = scoped(device, "the forward pass", || {
            let mut passes = Passes::new(device, &self.context.queue, ledger, options.profile);
            if plan.split_scratch > 0 {
                passes.set_split_scratch(storage_output(
                    ledger,
                    device,
                    "split-K partial products",
                    plan.split_scratch,
                    wgpu::BufferUsages::empty(),
                    poison,
                ));
            }
            let mut keep = Vec::new();
            let out_usage = wgpu::BufferUsages::COPY_DST;
            let (mut tokens, mut projection) = if plan.single {
                (None, None)
            } else {
                (
                    Some(storage_output(
                        ledger,
                        device,
                        "reduced tokens",
                        padded_size(plan.tokens_len, e),
                        out_usage,
                        poison,
                    )),
                    options.save_projection.then(|| {
                        storage_output(
                            ledger,
                            device,
                            "projection",
                            padded_size(plan.projection_len, 4),
                            out_usage,
                            poison,
                        )
                    }),
                )
            };
            for (group, group_plan) in groups.iter().zip(&plan.groups) {
                let buffers = self.group_buffers(group, group_plan, options);
                for (start, count) in group_plan.chunks() {
                    let mut uploaded = None;
                    let input = match (&group.source, group_plan.input) {
                        (Tokens::Host(host), _) => {
                            let size = group_plan.tokens * group_plan.width;
                            let bytes = host.values().encoded(
                                start * size..(start + count) * size,
                                self.precision.elem().dtype(),
                            );
                            Slice::whole(
                                uploaded.insert(storage_with(ledger, device, "features", &bytes)),
                            )
                        }
                        (Tokens::Gpu(gpu), InputPath::Direct) => {
                            let image = (group_plan.tokens * group_plan.width * e) as u64;
                            Slice {
                                buffer: gpu.buffer,
                                offset: gpu.offset + start as u64 * image,
                                size: Some(count as u64 * image),
                            }
                        }
                        (Tokens::Gpu(gpu), _) => {
                            let ingested = buffers.ingested.as_ref().expect("ingest buffer");
                            let image = group_plan.tokens * group_plan.width;
                            match &group_plan.split {
                                None => self.encode_ingest(
                                    &mut passes,
                                    gpu,
                                    start * image,
                                    count * image,
                                    Slice::whole(ingested),
                                ),
                                // Range by range, so that each source window fits a binding.
                                Some(split) => {
                                    let d = group_plan.width;
                                    for (first, tokens) in pieces(group_plan.tokens, split.tokens) {
                                        self.encode_ingest(
                                            &mut passes,
                                            gpu,
                                            start * image + first * d,
                                            tokens * d,
                                            range_of(ingested, first * d * e, tokens * d * e),
                                        );
                                    }
                                }
                            }
                            Slice::whole(ingested)
                        }
                    };
                    match &group_plan.split {
                        None => self.encode_chunk(
                            &mut passes,
                            group,
                            group_plan,
                            count,
                            input,
                            &buffers,
                            options,
                        ),
                        Some(split) => self.encode_split(
                            &mut passes,
                            group,
                            group_plan,
                            split,
                            input,
                            &buffers,
                            options,
                        ),
                    }
                    if let Some(tokens) = &tokens {
                        let per_image = group_plan.queries * group_plan.width;
                        passes.encoder.copy_buffer_to_buffer(
                            &buffers.tokens,
                            0,
                            tokens,
                            ((group_plan.tokens_at + start * per_image) * e) as u64,
                            Some(((count * per_image * e) as u64).next_multiple_of(4)),
                        );
                    }
                    if let Some(projection) = &projection {
                        let per_image = group_plan.queries * group_plan.tokens;
                        passes.encoder.copy_buffer_to_buffer(
                            &buffers.scores,
                            0,
                            projection,
                            ((group_plan.projection_at + start * per_image) * 4) as u64,
                            Some((count * per_image * 4) as u64),
                        );
                    }
                    // An upload is kept until the call is over.
                    keep.extend(uploaded);
                }
                let (chunk_tokens, chunk_scores, rest) = buffers.split();
                keep.extend(rest);
                if plan.single {
                    // The chunk's outputs are the call's.
                    tokens = Some(chunk_tokens);
                    if options.save_projection {
                        projection = Some(chunk_scores);
                    } else {
                        // Kept until the call is over, not pooled while it is recorded.
                        keep.push(chunk_scores);
                    }
                } else {
                    keep.extend([chunk_tokens, chunk_scores]);
                }
            }
            let tokens = tokens.expect("a call has at least one group");
            let (mut encoder, timings, parameters) = passes.finish();
            keep.extend(parameters);
            let staging = readback.then(|| {
                let tokens_staging = staging_for(ledger, device, &tokens);
                encoder.copy_buffer_to_buffer(&tokens, 0, &tokens_staging, 0, None);
                let projection_staging = projection.as_ref().map(|projection| {
                    let staging = staging_for(ledger, device, projection);
                    encoder.copy_buffer_to_buffer(projection, 0, &staging, 0, None);
                    staging
                });
                (tokens_staging, projection_staging)
            });
            let index = self.context.queue.submit([encoder.finish()]);
            (tokens, projection, staging, timings, keep, index)
        })?;
        let (tokens, projection, staging, timings, keep, index) = result;
        Ok(Submitted {
            tokens,
            projection,
            staging,
            timings,
            _in_use: keep,
            index,
            plan,
        })
    }

    /// The buffers one group's chunks share.
    fn group_buffers(&self, group: &Group, plan: &GroupPlan, options: &Options) -> GroupBuffers {
        let poison = options.poison;
        let device = &self.context.device;
        let ledger = &self.ledger;
        let (k, n, m, d, c) = (
            plan.chunk,
            plan.tokens,
            plan.queries,
            plan.width,
            self.weights.channels,
        );
        let e = self.precision.size();
        let output = |label: &str, count: usize, size: usize| {
            storage_output(
                ledger,
                device,
                label,
                padded_size(count, size),
                wgpu::BufferUsages::COPY_DST,
                poison,
            )
        };
        let queries = group.queries;
        let query_grids: Vec<u32> = queries
            .grids
            .iter()
            .flat_map(|q| {
                [
                    q.grid.offset as u32,
                    q.grid.height as u32,
                    q.grid.width as u32,
                    q.query_offset as u32,
                    q.height as u32,
                    q.width as u32,
                    0,
                    0,
                ]
            })
            .collect();
        let key_ranges: Vec<u32> = (0..m)
            .flat_map(|i| {
                let range = queries.key_range(i, options.scope, n);
                [range.start as u32, range.end as u32]
            })
            .collect();
        GroupBuffers {
            query_grids: storage_with(
                ledger,
                device,
                "query grids",
                bytemuck::cast_slice(&query_grids),
            ),
            key_ranges: storage_with(
                ledger,
                device,
                "key ranges",
                bytemuck::cast_slice(&key_ranges),
            ),
            samples: self.weights.table.as_ref().map(|table| {
                let samples = samples(group.layout, table.height, table.width);
                storage_with(
                    ledger,
                    device,
                    "position samples",
                    bytemuck::cast_slice(&samples),
                )
            }),
            ingested: (plan.input == InputPath::Ingest)
                .then(|| output("ingested features", k * n * d, e)),
            position_queries: self.weights.table.as_ref().map(|table| {
                let term = table.query_terms.get(group.layout, group.queries, || {
                    pooled_query_term(
                        group.layout,
                        group.queries,
                        &table.queries,
                        table.height,
                        table.width,
                        c,
                    )
                });
                storage_with(
                    ledger,
                    device,
                    "position query term",
                    bytemuck::cast_slice(&term.repeat(k)),
                )
            }),
            position_keys: (self.weights.table.is_some() && plan.association != Association::Keys)
                .then(|| output("position key term", n * c, e)),
            pooled: output("pooled queries", k * m * d, e),
            query: output("queries", k * m * c, 4),
            before_scores: match plan.association {
                Association::Keys => output("keys", k * n * c, e),
                _ => output("folded queries", k * m * d, 4),
            },
            scores: output("scores", k * m * n, 4),
            tokens: output("chunk tokens", k * m * d, e),
        }
    }
}

impl GpuEngine {
    /// Records the ingest copy of `elements` elements of `gpu`'s group, from element
    /// `first`, into `into`.
    fn encode_ingest(
        &self,
        passes: &mut Passes,
        gpu: &super::resident::GpuTokens,
        first: usize,
        elements: usize,
        into: Slice,
    ) {
        let size = gpu.dtype.size() as u64;
        let first_byte = gpu.offset + first as u64 * size;
        let align = (self.context.limits.min_storage_buffer_offset_alignment as u64).max(4);
        let window_start = first_byte - first_byte % align;
        let window_end = (first_byte + elements as u64 * size)
            .next_multiple_of(4)
            .min(gpu.buffer.size());
        let step = Step {
            name: "ingest",
            flops: 0.0,
            bytes: elements as f64 * (size as usize + self.precision.size()) as f64,
        };
        self.kernels.ingest.encode(
            passes,
            step,
            Slice {
                buffer: gpu.buffer,
                offset: window_start,
                size: Some(window_end - window_start),
            },
            gpu.dtype,
            ((first_byte - window_start) / size) as u32,
            elements as u32,
            into,
        );
    }

    /// Records the forward pass of one chunk of `count` images whose tokens are `input`.
    #[allow(clippy::too_many_arguments)]
    fn encode_chunk(
        &self,
        passes: &mut Passes,
        group: &Group,
        plan: &GroupPlan,
        count: usize,
        input: Slice,
        buffers: &GroupBuffers,
        options: &Options,
    ) {
        let matmul: MatmulVariant = options.kernels.matmul();
        let (n, m, d) = (plan.tokens, plan.queries, plan.width);
        let shape = ForwardShape {
            batch: count as u32,
            tokens: n as u32,
            queries: m as u32,
            width: d as u32,
            channels: self.weights.channels as u32,
            grid_count: group.layout.grids().len() as u32,
        };
        let has_table = self.weights.table.is_some();
        let products = Products::new(&shape, plan.association, has_table, &plan.splitting);
        let k = &self.kernels;
        let w = &self.weights;
        let (b, n_f, m_f, d_f) = (count as f64, n as f64, m as f64, d as f64);
        let e = self.precision.size();
        // Steps 1 and 3: Q_in = pool(X); the table's part joins the queries and keys below.
        let step = Step {
            name: "pooling",
            flops: b * (n_f + m_f) * d_f,
            bytes: b * (n_f + m_f) * d_f * e as f64,
        };
        k.pooling.encode(
            passes,
            step,
            &shape,
            input,
            0..n as u32,
            false,
            Slice::whole(&buffers.query_grids),
            Slice::whole(&buffers.pooled),
        );
        // Step 4: Q' = pool(E) w_q' + Q_in w_q' (omega and 1 / sqrt(d_c) folded in).
        self.encode_queries(passes, buffers, &products.queries, matmul);
        // Steps 4 and 5 in the chosen association.
        let scores = Slice::whole(&buffers.scores);
        let before_scores = Slice::whole(&buffers.before_scores);
        let (scores_lhs, scores_rhs) = match &products.path {
            // K = resize(T w_k) + X w_k, then S = Q' K^T.
            ScoresPath::Keys(keys) => {
                self.encode_resized_keys(passes, buffers, count, 0..n, before_scores);
                k.keys.encode(
                    passes,
                    product_step("keys", keys, (e, e, e)),
                    matmul,
                    keys,
                    input,
                    Slice::whole(&w.w_k),
                    before_scores,
                );
                (Slice::whole(&buffers.query), before_scores)
            }
            // Q'' = Q' w_k^T, then S = Q'' X^T (the table's part below).
            ScoresPath::Folded(folded) => {
                if let Some(position_keys) = &buffers.position_keys {
                    let into = Slice::whole(position_keys);
                    self.encode_resized_keys(passes, buffers, 1, 0..n, into);
                }
                k.scores.encode(
                    passes,
                    product_step("fold_w_k", folded, (4, e, 4)),
                    matmul,
                    folded,
                    Slice::whole(&buffers.query),
                    Slice::whole(&w.w_k),
                    before_scores,
                );
                (before_scores, input)
            }
        };
        k.scores.encode(
            passes,
            product_step("scores", &products.scores, (4, e, 4)),
            matmul,
            &products.scores,
            scores_lhs,
            scores_rhs,
            scores,
        );
        // The folded scores see X, not Xp: add Q' (E w_k)^T = Q' resize(T w_k)^T.
        if let (Some(position_keys), Some(table_part)) =
            (&buffers.position_keys, &products.table_scores)
        {
            k.scores.encode(
                passes,
                product_step("scores", table_part, (4, e, 4)),
                matmul,
                table_part,
                Slice::whole(&buffers.query),
                Slice::whole(position_keys),
                scores,
            );
        }
        // Step 6: P = softmax(S) in place, zeros outside each query's key range.
        let step = Step {
            name: "softmax",
            // The largest, the exponent of the difference, the sum, the division.
            flops: 4.0 * b * m_f * n_f,
            bytes: 2.0 * b * m_f * n_f * 4.0,
        };
        k.softmax.encode(
            passes,
            step,
            &shape,
            Slice::whole(&buffers.key_ranges),
            scores,
        );
        // Step 7: Y = P X.
        k.reduction.encode(
            passes,
            product_step("reduction", &products.reduction, (4, e, e)),
            matmul,
            &products.reduction,
            scores,
            input,
            Slice::whole(&buffers.tokens),
        );
    }
}

impl GpuEngine {
    /// Records `into = resize(T w_k)` (`E w_k`) for the tokens `tokens` of `images` images,
    /// when the weights have a position table (else nothing).
    fn encode_resized_keys(
        &self,
        passes: &mut Passes,
        buffers: &GroupBuffers,
        images: usize,
        tokens: std::ops::Range<usize>,
        into: Slice,
    ) {
        let (Some(table), Some(samples)) = (&self.weights.table, &buffers.samples) else {
            return;
        };
        let c = self.weights.channels;
        let (count, cells) = (tokens.len(), table.height * table.width);
        let step = Step {
            name: "position",
            // Four bilinear corners, a multiply and an add each.
            flops: 8.0 * (images * count * c) as f64,
            bytes: ((images * count + cells) * c * self.precision.size()) as f64,
        };
        let shape = ForwardShape {
            batch: images as u32,
            tokens: count as u32,
            queries: 0,
            width: c as u32,
            channels: c as u32,
            grid_count: 0,
        };
        let sample = std::mem::size_of::<Sample>();
        self.kernels.position.encode(
            passes,
            step,
            &shape,
            None,
            Slice::whole(&table.keys),
            range_of(samples, tokens.start * sample, count * sample),
            into,
        );
    }

    /// Records `Q' = pool(E) w_q' + Q_in w_q'` for the images of `queries`: the table's term
    /// (the same for every image) copied in, then the product (which accumulates when there
    /// is a table) added to it.
    fn encode_queries(
        &self,
        passes: &mut Passes,
        buffers: &GroupBuffers,
        queries: &Product,
        matmul: MatmulVariant,
    ) {
        if let Some(term) = &buffers.position_queries {
            let bytes = (queries.batch * queries.rows * queries.columns * 4) as u64;
            passes
                .encoder
                .copy_buffer_to_buffer(term, 0, &buffers.query, 0, Some(bytes));
        }
        let e = self.precision.size();
        self.kernels.queries.encode(
            passes,
            product_step("queries", queries, (e, 4, 4)),
            matmul,
            queries,
            Slice::whole(&buffers.pooled),
            Slice::whole(&self.weights.w_q_scaled),
            Slice::whole(&buffers.query),
        );
    }

    /// Records the forward pass of one image too large for one binding (`input` holds all
    /// of it, from its offset): token range by token range for position, pooling (summed
    /// into `Q_in`) and keys; then query block by query block for the scores and the
    /// softmax, and `Y` summed over the token ranges (`Y += P[:, range] X[range]`).
    #[allow(clippy::too_many_arguments)]
    fn encode_split(
        &self,
        passes: &mut Passes,
        group: &Group,
        plan: &GroupPlan,
        split: &Split,
        input: Slice,
        buffers: &GroupBuffers,
        options: &Options,
    ) {
        let matmul: MatmulVariant = options.kernels.matmul();
        let (n, m, d) = (plan.tokens, plan.queries, plan.width);
        let c = self.weights.channels;
        let e = self.precision.size();
        let k = &self.kernels;
        let w = &self.weights;
        let shape = |tokens: usize, queries: usize| ForwardShape {
            batch: 1,
            tokens: tokens as u32,
            queries: queries as u32,
            width: d as u32,
            channels: c as u32,
            grid_count: group.layout.grids().len() as u32,
        };
        let of_input = |first: usize, count: usize| Slice {
            buffer: input.buffer,
            offset: input.offset + (first * d * e) as u64,
            size: Some((count * d * e) as u64),
        };
        let product = |rows: usize, columns: usize, inner: usize| {
            Product::new(1, rows as u32, columns as u32, inner as u32)
        };
        // Token ranges: Q_in = pool(X) (summed) and K = resize(T w_k) + X w_k.
        for (index, (first, tokens)) in pieces(n, split.tokens).enumerate() {
            let x = of_input(first, tokens);
            let (t, d_f, e_f) = (tokens as f64, d as f64, e as f64);
            let step = Step {
                name: "pooling",
                flops: t * d_f,
                bytes: (t + m as f64) * d_f * e_f,
            };
            k.pooling.encode(
                passes,
                step,
                &shape(n, m),
                x,
                first as u32..(first + tokens) as u32,
                index > 0,
                Slice::whole(&buffers.query_grids),
                Slice::whole(&buffers.pooled),
            );
            let keys_range = range_of(&buffers.before_scores, first * c * e, tokens * c * e);
            self.encode_resized_keys(passes, buffers, 1, first..first + tokens, keys_range);
            let keys = Product {
                rhs_per_image: false,
                accumulate: w.table.is_some(),
                ..product(tokens, c, d)
            };
            k.keys.encode(
                passes,
                product_step("keys", &keys, (e, e, e)),
                matmul,
                &keys,
                x,
                Slice::whole(&w.w_k),
                keys_range,
            );
        }
        // Q' = pool(E) w_q' + Q_in w_q' (whole).
        let queries = Product {
            rhs_per_image: false,
            accumulate: w.table.is_some(),
            ..product(m, c, d)
        };
        self.encode_queries(passes, buffers, &queries, matmul);
        // Query blocks: S = Q' K^T, P = softmax(S), Y = sum over ranges of P[:, r] X[r].
        for (first_query, count) in pieces(m, split.queries) {
            let scores = range_of(&buffers.scores, first_query * n * 4, count * n * 4);
            let product_scores = Product {
                rhs_transposed: true,
                ..product(count, n, c)
            };
            k.scores.encode(
                passes,
                product_step("scores", &product_scores, (4, e, 4)),
                matmul,
                &product_scores,
                range_of(&buffers.query, first_query * c * 4, count * c * 4),
                Slice::whole(&buffers.before_scores),
                scores,
            );
            let step = Step {
                name: "softmax",
                flops: 4.0 * count as f64 * n as f64,
                bytes: 2.0 * count as f64 * n as f64 * 4.0,
            };
            k.softmax.encode(
                passes,
                step,
                &shape(n, count),
                range_of(&buffers.key_ranges, first_query * 8, count * 8),
                scores,
            );
            let tokens_out = range_of(&buffers.tokens, first_query * d * e, count * d * e);
            for (index, (first, tokens)) in pieces(n, split.tokens).enumerate() {
                let reduction = Product {
                    lhs_row_stride: Some(n as u32),
                    accumulate: index > 0,
                    ..product(count, d, tokens)
                };
                let block = range_of(
                    &buffers.scores,
                    (first_query * n + first) * 4,
                    ((count - 1) * n + tokens) * 4,
                );
                k.reduction.encode(
                    passes,
                    product_step("reduction", &reduction, (4, e, e)),
                    matmul,
                    &reduction,
                    block,
                    of_input(first, tokens),
                    tokens_out,
                );
            }
        }
    }
}

/// The `size` bytes of `buffer` from byte `offset`, as a binding.
fn range_of(buffer: &wgpu::Buffer, offset: usize, size: usize) -> Slice<'_> {
    Slice {
        buffer,
        offset: offset as u64,
        size: Some(size as u64),
    }
}

impl GroupBuffers {
    /// The chunk's tokens and scores (the call's outputs when there is one chunk), and every
    /// other buffer, to keep until the call is over.
    fn split(self) -> (Tracked, Tracked, Vec<Tracked>) {
        let mut rest = vec![
            self.query_grids,
            self.key_ranges,
            self.pooled,
            self.query,
            self.before_scores,
        ];
        rest.extend(self.samples);
        rest.extend(self.ingested);
        rest.extend(self.position_queries);
        rest.extend(self.position_keys);
        (self.tokens, self.scores, rest)
    }
}

/// The buffers of one group, sized for its chunk, reused by every chunk of it.
struct GroupBuffers {
    query_grids: Tracked,
    key_ranges: Tracked,
    samples: Option<Tracked>,
    /// The ingest kernel's output (tokens from the application's buffer).
    ingested: Option<Tracked>,
    /// What the position table adds to the scaled queries, one copy per image of a chunk.
    position_queries: Option<Tracked>,
    /// `E w_k` for the folded scores (one image).
    position_keys: Option<Tracked>,
    pooled: Tracked,
    query: Tracked,
    /// `K` or `Q''`.
    before_scores: Tracked,
    scores: Tracked,
    tokens: Tracked,
}

/// A submitted call: its outputs, what reads them back, what must live until it is done.
struct Submitted {
    tokens: Tracked,
    projection: Option<Tracked>,
    staging: Option<(Tracked, Option<Tracked>)>,
    timings: PassTimings,
    /// Buffers the submission uses, kept (and counted) until it has run.
    _in_use: Vec<Tracked>,
    index: wgpu::SubmissionIndex,
    plan: CallPlan,
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

//! The GPU forward pass of SPEC section 4: weights uploaded once, kernels in spec order,
//! every group and chunk of a call recorded into one command encoder and one queue submission.
//! This file sets the engine up (pipelines, weights) and plans calls; `record.rs` records a
//! call, `encode.rs` the kernels of one chunk, `readback.rs` brings the outputs back.

mod encode;
pub(crate) mod readback;
mod record;

use std::sync::{Arc, Mutex};

use super::buffers::{elem_bytes, padded_size, storage_with};
use super::context::GpuContext;
use super::kernels::ingest::Ingest;
use super::kernels::matmul::{Matmul, Product};
use super::kernels::pooling::Pooling;
use super::kernels::position::Position;
use super::kernels::softmax::Softmax;
use super::memory::{Ledger, Tracked, DEFAULT_POOL_LIMIT};
use super::plan::{plan, CallPlan, Device, Group, Wants};
use super::scope::scoped;
use super::shaders::{KernelSources, ShaderSource};
use crate::error::{Error, Result};
use crate::host_math::{scaled_query_weights, ProjectedTable};
use crate::options::{Options, Precision};
use crate::profile::{Clock, Step, StepTime};
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
    /// The position table projected once (`T w_k`, `T w_q'`, on the host), if the weights
    /// have one: the query term is pooled on the host, the key term resized on the device.
    table: Option<ProjectedTable>,
    /// `T w_k` (`gh x gw x d_c`) on the device, which `position.wgsl` resizes onto the tokens.
    table_keys: Option<Tracked>,
    width: usize,
    channels: usize,
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
            let table = ProjectedTable::of(weights, &w_q_scaled);
            let table_keys = table.as_ref().map(|table| {
                storage_with(
                    &ledger,
                    device,
                    "pos_embed w_k",
                    &elem_bytes(&table.keys, elem),
                )
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
                table_keys,
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
}

//! The forward pass of SPEC section 4 on the GPU: weights uploaded once, kernels in spec order,
//! one queue submission per call.

use super::buffers::{
    elem_bytes, elem_values, padded_size, read_staging, staging_for, storage_output, storage_with,
};
use super::context::GpuContext;
use crate::compress::{Options, Precision};
use crate::error::{Error, Result};
use crate::kernels::matmul::{Matmul, Product};
use crate::kernels::pooling::Pooling;
use crate::kernels::position::Position;
use crate::kernels::scores::Scores;
use crate::kernels::softmax::Softmax;
use crate::kernels::{ForwardShape, MAX_GROUPS_PER_DIMENSION};
use crate::layout::{Layout, Queries};
use crate::shaders::KernelSources;
use crate::tensor::Features;
use crate::weights::PMeta;

struct Kernels {
    position: Position,
    pooling: Pooling,
    projection: Matmul,
    scores: Scores,
    softmax: Softmax,
    reduction: Matmul,
}

struct Weights {
    w_q: wgpu::Buffer,
    w_k: wgpu::Buffer,
    omega: wgpu::Buffer,
    /// The position table with its rows and columns, if the weights have one.
    table: Option<(wgpu::Buffer, u32, u32)>,
    width: usize,
    channels: usize,
}

/// The GPU forward pass for one set of weights at one precision.
pub struct GpuEngine {
    context: GpuContext,
    precision: Precision,
    kernels: Kernels,
    weights: Weights,
}

/// What a GPU run hands back: `Y` (`b x m x d`) and, when asked, `P` (`b x m x n`).
pub struct GpuOutput {
    /// Reduced tokens, widened to f32.
    pub tokens: Vec<f32>,
    /// The compression projection.
    pub projection: Option<Vec<f32>>,
}

/// Runs `work` inside validation and out-of-memory error scopes and turns what they catch
/// into an error.
fn scoped<T>(device: &wgpu::Device, what: &str, work: impl FnOnce() -> T) -> Result<T> {
    let memory = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let value = work();
    let validation = pollster::block_on(validation.pop());
    let memory = pollster::block_on(memory.pop());
    match validation.or(memory) {
        Some(error) => Err(Error::Gpu(format!("{what} failed on the GPU: {error}"))),
        None => Ok(value),
    }
}

/// Fails, naming the buffer, when one would pass the device's storage binding or buffer size
/// limits, or when its element count does not fit the kernels' 32-bit indices.
fn check_fits(context: &GpuContext, buffers: &[(&str, usize, usize)]) -> Result<()> {
    let limit = context
        .limits
        .max_storage_buffer_binding_size
        .min(context.limits.max_buffer_size);
    for (name, count, size) in buffers {
        let bytes = padded_size(*count, *size);
        if bytes > limit || *count > u32::MAX as usize {
            return Err(Error::Unsupported(format!(
                "{name} needs {bytes} bytes in one storage binding; adapter {} allows {limit} \
                 (split the batch into smaller ones)",
                context.adapter.name
            )));
        }
    }
    Ok(())
}

impl GpuEngine {
    /// Builds the pipelines and uploads the weights.
    pub fn new(context: GpuContext, weights: &PMeta, precision: Precision) -> Result<Self> {
        if precision == Precision::F16 && !context.has_f16() {
            return Err(Error::Unsupported(format!(
                "--precision f16 needs SHADER_F16, which adapter {} does not offer; \
                 use --precision f32",
                context.adapter.name
            )));
        }
        let elem = precision.elem();
        let table_size = weights.position().map_or(0, |t| t.values.len());
        check_fits(
            &context,
            &[
                ("w_q", weights.w_q().len(), precision.size()),
                ("pos_embed", table_size, precision.size()),
            ],
        )?;
        let device = &context.device;
        let sources = KernelSources::for_precision(precision);
        let (kernels, uploaded) = scoped(device, "building the kernels", || {
            let kernels = Kernels {
                position: Position::new(device, &sources.position),
                pooling: Pooling::new(device, &sources.pooling),
                projection: Matmul::new(device, &sources.projection),
                scores: Scores::new(device, &sources.scores),
                softmax: Softmax::new(device, &sources.softmax),
                reduction: Matmul::new(device, &sources.reduction),
            };
            let table = weights.position().map(|table| {
                (
                    storage_with(device, "pos_embed", &elem_bytes(&table.values, elem)),
                    table.height as u32,
                    table.width as u32,
                )
            });
            let uploaded = Weights {
                w_q: storage_with(device, "w_q", &elem_bytes(weights.w_q(), elem)),
                w_k: storage_with(device, "w_k", &elem_bytes(weights.w_k(), elem)),
                omega: storage_with(device, "omega", bytemuck::cast_slice(weights.omega())),
                table,
                width: weights.width(),
                channels: weights.channels(),
            };
            (kernels, uploaded)
        })?;
        Ok(GpuEngine {
            context,
            precision,
            kernels,
            weights: uploaded,
        })
    }

    /// The context the engine runs on.
    pub fn context(&self) -> &GpuContext {
        &self.context
    }

    /// Runs the forward pass on `features` (shapes already checked against the weights and
    /// layout) with the scope, projection, poisoning and kernel choices of `options`.
    pub fn run(
        &self,
        features: &Features,
        layout: &Layout,
        queries: &Queries,
        options: &Options,
    ) -> Result<GpuOutput> {
        let Options {
            scope,
            save_projection: want_projection,
            poison,
            matmul,
            ..
        } = *options;
        let (batch, n, d) = (features.batch(), features.tokens(), features.width());
        let (m, c) = (queries.count, self.weights.channels);
        debug_assert_eq!(d, self.weights.width);
        let elem = self.precision.elem();
        let elem_size = self.precision.size();
        check_fits(
            &self.context,
            &[
                ("features", batch * n * d, elem_size),
                ("the pooled queries", batch * m * d, elem_size),
                ("the keys", batch * n * c, elem_size),
                ("the scores", batch * m * n, 4),
            ],
        )?;
        let shape = ForwardShape {
            batch: batch as u32,
            tokens: n as u32,
            queries: m as u32,
            width: d as u32,
            channels: c as u32,
            grid_count: layout.grids().len() as u32,
            table_height: self.weights.table.as_ref().map_or(1, |t| t.1),
            table_width: self.weights.table.as_ref().map_or(1, |t| t.2),
        };
        let keys_product = Product {
            batch: shape.batch,
            rows: shape.tokens,
            columns: shape.channels,
            inner: shape.width,
            lhs_per_image: true,
            rhs_per_image: false,
        };
        let queries_product = Product {
            rows: shape.queries,
            ..keys_product
        };
        let reduction_product = Product {
            batch: shape.batch,
            rows: shape.queries,
            columns: shape.width,
            inner: shape.tokens,
            lhs_per_image: true,
            rhs_per_image: true,
        };
        for product in [&keys_product, &queries_product, &reduction_product] {
            if product
                .groups(matmul)
                .iter()
                .any(|g| *g > MAX_GROUPS_PER_DIMENSION)
            {
                return Err(Error::Unsupported(format!(
                    "a {}x{} product for a batch of {} passes the dispatch limit of {} \
                     workgroups per dimension",
                    product.rows, product.columns, product.batch, MAX_GROUPS_PER_DIMENSION
                )));
            }
        }

        let device = &self.context.device;
        let k = &self.kernels;
        let w = &self.weights;
        let output = scoped(device, "the forward pass", || {
            let grids: Vec<u32> = layout
                .grids()
                .iter()
                .flat_map(|g| [g.offset as u32, g.height as u32, g.width as u32, 0])
                .collect();
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
                    let range = queries.key_range(i, scope, n);
                    [range.start as u32, range.end as u32]
                })
                .collect();
            let input = storage_with(device, "features", &elem_bytes(features.values(), elem));
            let grids = storage_with(device, "grids", bytemuck::cast_slice(&grids));
            let query_grids =
                storage_with(device, "query grids", bytemuck::cast_slice(&query_grids));
            let key_ranges = storage_with(device, "key ranges", bytemuck::cast_slice(&key_ranges));
            let output = |label: &str, count: usize, size: usize| {
                storage_output(device, label, padded_size(count, size), poison)
            };
            let pooled = output("pooled queries", batch * m * d, elem_size);
            let query = output("queries", batch * m * c, elem_size);
            let key = output("keys", batch * n * c, elem_size);
            let scores = output("scores", batch * m * n, 4);
            let tokens = output("tokens", batch * m * d, elem_size);

            let mut encoder = device.create_command_encoder(&Default::default());
            // Step 1: Xp = X + E, or X itself without a position table.
            let positioned = match &w.table {
                Some((table, _, _)) => {
                    let positioned = output("positioned features", batch * n * d, elem_size);
                    k.position.encode(
                        device,
                        &mut encoder,
                        &shape,
                        &input,
                        table,
                        &grids,
                        &positioned,
                    );
                    positioned
                }
                None => input.clone(),
            };
            // Step 3: Q_in = pool(Xp).
            k.pooling.encode(
                device,
                &mut encoder,
                &shape,
                &positioned,
                &query_grids,
                &pooled,
            );
            // Step 4: Q = Q_in w_q, K = Xp w_k.
            k.projection.encode(
                device,
                &mut encoder,
                matmul,
                &queries_product,
                &pooled,
                &w.w_q,
                &query,
            );
            k.projection.encode(
                device,
                &mut encoder,
                matmul,
                &keys_product,
                &positioned,
                &w.w_k,
                &key,
            );
            // Steps 5 and 6: S, then P = softmax(S) in place.
            k.scores.encode(
                device,
                &mut encoder,
                &shape,
                &query,
                &key,
                &w.omega,
                &key_ranges,
                &scores,
            );
            k.softmax
                .encode(device, &mut encoder, &shape, &key_ranges, &scores);
            // Step 7: Y = P X.
            k.reduction.encode(
                device,
                &mut encoder,
                matmul,
                &reduction_product,
                &scores,
                &input,
                &tokens,
            );

            let tokens_staging = staging_for(device, &tokens);
            encoder.copy_buffer_to_buffer(&tokens, 0, &tokens_staging, 0, None);
            let projection_staging = want_projection.then(|| {
                let staging = staging_for(device, &scores);
                encoder.copy_buffer_to_buffer(&scores, 0, &staging, 0, None);
                staging
            });
            self.context.queue.submit([encoder.finish()]);
            (tokens_staging, projection_staging)
        })?;
        let (tokens_staging, projection_staging) = output;
        let tokens = elem_values(&read_staging(device, &tokens_staging)?, elem, batch * m * d);
        let projection = match projection_staging {
            Some(staging) => Some(elem_values(
                &read_staging(device, &staging)?,
                crate::shaders::Elem::F32,
                batch * m * n,
            )),
            None => None,
        };
        Ok(GpuOutput { tokens, projection })
    }
}

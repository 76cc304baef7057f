//! The forward pass of SPEC section 4 on the GPU: weights uploaded once, kernels in spec order,
//! one queue submission per call.

use super::buffers::{
    elem_bytes, elem_values, padded_size, read_staging, staging_for, storage_output, storage_with,
};
use super::context::GpuContext;
use crate::compress::Association;
use crate::compress::{Options, Precision};
use crate::error::{Error, Result};
use crate::kernels::matmul::{Matmul, Product};
use crate::kernels::pooling::Pooling;
use crate::kernels::position::{samples, Position};
use crate::kernels::softmax::Softmax;
use crate::kernels::{ForwardShape, Passes, Step, MAX_GROUPS_PER_DIMENSION};
use crate::layout::{Layout, Queries};
use crate::profile::{Clock, StepTime};
use crate::shaders::{Elem, KernelSources, ShaderSource};
use crate::tensor::Features;
use crate::weights::PMeta;

struct Kernels {
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
    w_q_scaled: wgpu::Buffer,
    w_k: wgpu::Buffer,
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

/// What a GPU run hands back: `Y` (`b x m x d`) and, when asked, `P` (`b x m x n`) and the
/// time of each kernel.
pub struct GpuOutput {
    /// Reduced tokens, widened to f32.
    pub tokens: Vec<f32>,
    /// The compression projection.
    pub projection: Option<Vec<f32>>,
    /// The clock and the time of each kernel, when profiling was asked for.
    pub timings: Option<(Clock, Vec<StepTime>)>,
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

/// How step 5 reaches the scores: the product that comes before `S`.
enum ScoresPath {
    /// `K = Xp w_k`, then `S = Q' K^T`.
    Keys(Product),
    /// `Q'' = Q' w_k^T`, then `S = Q'' Xp^T`.
    Folded(Product),
}

/// The passes of one run in order, with the product each matrix step runs.
struct Plan {
    queries: Product,
    path: ScoresPath,
    scores: Product,
    reduction: Product,
}

impl Plan {
    fn new(shape: &ForwardShape, association: Association) -> Self {
        let shared_rhs = Product {
            batch: shape.batch,
            rows: shape.queries,
            columns: shape.channels,
            inner: shape.width,
            lhs_per_image: true,
            rhs_per_image: false,
            rhs_transposed: false,
        };
        let scores_over = |inner: u32| Product {
            columns: shape.tokens,
            inner,
            rhs_per_image: true,
            rhs_transposed: true,
            ..shared_rhs
        };
        let (path, scores) = match association {
            Association::Keys => (
                ScoresPath::Keys(Product {
                    rows: shape.tokens,
                    ..shared_rhs
                }),
                scores_over(shape.channels),
            ),
            // `association` is resolved: `Auto` does not come here.
            Association::Tokens | Association::Auto => (
                ScoresPath::Folded(Product {
                    columns: shape.width,
                    inner: shape.channels,
                    rhs_transposed: true,
                    ..shared_rhs
                }),
                scores_over(shape.width),
            ),
        };
        Plan {
            queries: shared_rhs,
            path,
            scores,
            reduction: Product {
                columns: shape.width,
                inner: shape.tokens,
                rhs_per_image: true,
                ..shared_rhs
            },
        }
    }

    fn products(&self) -> [&Product; 4] {
        let (ScoresPath::Keys(before_scores) | ScoresPath::Folded(before_scores)) = &self.path;
        [&self.queries, before_scores, &self.scores, &self.reduction]
    }
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
                ("w_q", weights.w_q().len(), 4),
                ("pos_embed", table_size, precision.size()),
            ],
        )?;
        let device = &context.device;
        let sources = KernelSources::for_precision(precision);
        let (kernels, uploaded) = scoped(device, "building the kernels", || {
            // Products with the same shader (all four at f32) share their pipelines.
            let mut built: Vec<(String, Matmul)> = Vec::new();
            let mut matmul = |source: &ShaderSource| {
                if let Some((_, matmul)) = built.iter().find(|(code, _)| *code == source.code) {
                    return matmul.clone();
                }
                let matmul = Matmul::new(device, source);
                built.push((source.code.clone(), matmul.clone()));
                matmul
            };
            let kernels = Kernels {
                position: Position::new(device, &sources.position),
                pooling: Pooling::new(device, &sources.pooling),
                queries: matmul(&sources.queries),
                keys: matmul(&sources.keys),
                scores: matmul(&sources.scores),
                softmax: Softmax::new(device, &sources.softmax),
                reduction: matmul(&sources.reduction),
            };
            let table = weights.position().map(|table| {
                (
                    storage_with(device, "pos_embed", &elem_bytes(&table.values, elem)),
                    table.height as u32,
                    table.width as u32,
                )
            });
            let uploaded = Weights {
                w_q_scaled: storage_with(
                    device,
                    "w_q diag(omega) / sqrt(d_c)",
                    bytemuck::cast_slice(&scaled_query_weights(weights)),
                ),
                w_k: storage_with(device, "w_k", &elem_bytes(weights.w_k(), elem)),
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
    /// layout) with the scope, projection, poisoning, kernel and profiling choices of
    /// `options`.
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
            kernels: variant,
            association,
            profile,
            ..
        } = *options;
        let matmul = variant.matmul();
        let (batch, n, d) = (features.batch(), features.tokens(), features.width());
        let (m, c) = (queries.count, self.weights.channels);
        debug_assert_eq!(d, self.weights.width);
        let association = association.resolve(variant, n, m, d, c);
        let elem = self.precision.elem();
        let elem_size = self.precision.size();
        let mut intermediates = vec![
            ("features", batch * n * d, elem_size),
            ("the pooled queries", batch * m * d, elem_size),
            ("the scores", batch * m * n, 4),
        ];
        intermediates.push(match association {
            Association::Keys => ("the keys", batch * n * c, elem_size),
            _ => ("the folded queries", batch * m * d, 4),
        });
        check_fits(&self.context, &intermediates)?;
        let shape = ForwardShape {
            batch: batch as u32,
            tokens: n as u32,
            queries: m as u32,
            width: d as u32,
            channels: c as u32,
            grid_count: layout.grids().len() as u32,
        };
        let plan = Plan::new(&shape, association);
        for product in plan.products() {
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
        let (b, n_f, m_f, d_f) = (batch as f64, n as f64, m as f64, d as f64);
        let e = elem_size;
        let output = scoped(device, "the forward pass", || {
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
            let query_grids =
                storage_with(device, "query grids", bytemuck::cast_slice(&query_grids));
            let key_ranges = storage_with(device, "key ranges", bytemuck::cast_slice(&key_ranges));
            let output = |label: &str, count: usize, size: usize| {
                storage_output(device, label, padded_size(count, size), poison)
            };
            let pooled = output("pooled queries", batch * m * d, elem_size);
            let query = output("queries", batch * m * c, 4);
            let scores = output("scores", batch * m * n, 4);
            let tokens = output("tokens", batch * m * d, elem_size);

            let mut passes = Passes::new(device, &self.context.queue, profile);
            // Step 1: Xp = X + E, or X itself without a position table.
            let positioned = match &w.table {
                Some((table, height, width)) => {
                    let positioned = output("positioned features", batch * n * d, elem_size);
                    let step = Step {
                        name: "position",
                        // Four bilinear corners (a multiply and an add each) and the add.
                        flops: 9.0 * b * n_f * d_f,
                        bytes: (2.0 * b * n_f + (*height * *width) as f64) * d_f * e as f64,
                    };
                    let samples = samples(layout, *height as usize, *width as usize);
                    let samples =
                        storage_with(device, "position samples", bytemuck::cast_slice(&samples));
                    k.position.encode(
                        &mut passes,
                        step,
                        &shape,
                        &input,
                        table,
                        &samples,
                        &positioned,
                    );
                    positioned
                }
                None => input.clone(),
            };
            // Step 3: Q_in = pool(Xp).
            let step = Step {
                name: "pooling",
                flops: b * (n_f + m_f) * d_f,
                bytes: b * (n_f + m_f) * d_f * e as f64,
            };
            k.pooling.encode(
                &mut passes,
                step,
                &shape,
                &positioned,
                &query_grids,
                &pooled,
            );
            // Step 4: Q' = Q_in w_q' (omega and 1 / sqrt(d_c) folded in).
            k.queries.encode(
                &mut passes,
                product_step("queries", &plan.queries, (e, 4, 4)),
                matmul,
                &plan.queries,
                &pooled,
                &w.w_q_scaled,
                &query,
            );
            // Steps 4 and 5 in the chosen association.
            match &plan.path {
                ScoresPath::Keys(keys) => {
                    // K = Xp w_k, then S = Q' K^T.
                    let key = output("keys", batch * n * c, elem_size);
                    k.keys.encode(
                        &mut passes,
                        product_step("keys", keys, (e, e, e)),
                        matmul,
                        keys,
                        &positioned,
                        &w.w_k,
                        &key,
                    );
                    k.scores.encode(
                        &mut passes,
                        product_step("scores", &plan.scores, (4, e, 4)),
                        matmul,
                        &plan.scores,
                        &query,
                        &key,
                        &scores,
                    );
                }
                ScoresPath::Folded(folded) => {
                    // Q'' = Q' w_k^T, then S = Q'' Xp^T.
                    let folded_query = output("folded queries", batch * m * d, 4);
                    k.scores.encode(
                        &mut passes,
                        product_step("fold_w_k", folded, (4, e, 4)),
                        matmul,
                        folded,
                        &query,
                        &w.w_k,
                        &folded_query,
                    );
                    k.scores.encode(
                        &mut passes,
                        product_step("scores", &plan.scores, (4, e, 4)),
                        matmul,
                        &plan.scores,
                        &folded_query,
                        &positioned,
                        &scores,
                    );
                }
            }
            // Step 6: P = softmax(S) in place, zeros outside each query's key range.
            let step = Step {
                name: "softmax",
                // The largest, the exponent of the difference, the sum, the division.
                flops: 4.0 * b * m_f * n_f,
                bytes: 2.0 * b * m_f * n_f * 4.0,
            };
            k.softmax
                .encode(&mut passes, step, &shape, &key_ranges, &scores);
            // Step 7: Y = P X.
            k.reduction.encode(
                &mut passes,
                product_step("reduction", &plan.reduction, (4, e, e)),
                matmul,
                &plan.reduction,
                &scores,
                &input,
                &tokens,
            );

            let (mut encoder, timings) = passes.finish();
            let tokens_staging = staging_for(device, &tokens);
            encoder.copy_buffer_to_buffer(&tokens, 0, &tokens_staging, 0, None);
            let projection_staging = want_projection.then(|| {
                let staging = staging_for(device, &scores);
                encoder.copy_buffer_to_buffer(&scores, 0, &staging, 0, None);
                staging
            });
            self.context.queue.submit([encoder.finish()]);
            (tokens_staging, projection_staging, timings)
        })?;
        let (tokens_staging, projection_staging, timings) = output;
        let tokens = elem_values(&read_staging(device, &tokens_staging)?, elem, batch * m * d);
        let projection = match projection_staging {
            Some(staging) => Some(elem_values(
                &read_staging(device, &staging)?,
                Elem::F32,
                batch * m * n,
            )),
            None => None,
        };
        let timings = timings.read(|staging| read_staging(device, staging))?;
        Ok(GpuOutput {
            tokens,
            projection,
            timings,
        })
    }
}

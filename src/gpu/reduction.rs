//! `Y = P X` for a projection made on the host (the methods of `crate::methods` other than
//! `metacompress`): the forward pass's own reduction kernel, on a device with no weights.

use std::sync::Arc;

use super::buffers::copy_to_staging;
use super::buffers::{elem_bytes, elem_values, padded_size, read_staging};
use super::buffers::{storage_output, storage_with};
use super::context::GpuContext;
use super::memory::Ledger;
use super::scope::scoped;
use crate::error::{Error, Result};
use crate::gpu::kernels::matmul::{Matmul, MatmulVariant, Product};
use crate::gpu::kernels::{Passes, Slice};
use crate::gpu::shaders::KernelSources;
use crate::options::{Options, Precision, SplitK};
use crate::profile::Step;
use crate::tensor::Features;

/// The reduction kernel on one device, at one storage precision.
pub struct GpuReduction {
    context: GpuContext,
    precision: Precision,
    matmul: Matmul,
    ledger: Arc<Ledger>,
}

impl GpuReduction {
    /// Builds the kernel (`P` f32, `X` and `Y` in the precision's element type).
    pub fn new(context: GpuContext, precision: Precision) -> Result<Self> {
        context.check_alive()?;
        context.check_precision(precision)?;
        let sources = KernelSources::for_precision(precision);
        // Split-K writes f32 partial products: only where Y is f32.
        let split_sum = (precision == Precision::F32).then_some(&sources.split_sum);
        let matmul = scoped(&context.device, "building the reduction kernel", || {
            Matmul::new(&context.device, &sources.reduction, split_sum)
        })?;
        Ok(GpuReduction {
            context,
            precision,
            matmul,
            ledger: Ledger::new(),
        })
    }

    /// The context the kernel runs on.
    pub fn context(&self) -> &GpuContext {
        &self.context
    }

    /// The storage precision of `X` and `Y`.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// `Y` (`b x m x d`, widened to f32) for `projection` (`b x m x n`) and `features`.
    /// Images go in chunks whose `X`, `P` and `Y` each fit one storage binding (the device's,
    /// or `options.max_binding_bytes` when lower); an image that alone passes it is refused
    /// before any device work. `options.poison` starts `Y` as NaN; `options.split_k` cuts the
    /// product along `n` as in the forward pass (f32 only).
    pub fn reduce(
        &self,
        features: &Features,
        projection: &[f32],
        options: &Options,
    ) -> Result<Vec<f32>> {
        self.context.check_alive()?;
        let (b, n, d) = (features.batch(), features.tokens(), features.width());
        let m = projection.len() / (b * n);
        debug_assert_eq!(projection.len(), b * m * n);
        let e = self.precision.size();
        let poison = options.poison;
        let device_limit = self.context.binding_limit();
        let limit = options
            .max_binding_bytes
            .map_or(device_limit, |forced| forced.min(device_limit));
        let per_image = [
            ("features", (n * d * e) as u64),
            ("projection", (m * n * 4) as u64),
            ("reduced tokens", (m * d * e) as u64),
        ];
        let mut chunk = b;
        for (name, bytes) in per_image {
            if bytes > limit {
                return Err(Error::TooLarge(format!(
                    "one image's {name} need {bytes} bytes in one storage binding; adapter {} \
                     allows {limit}",
                    self.context.adapter.name
                )));
            }
            chunk = chunk.min((limit / bytes.max(1)) as usize);
        }
        let device = &self.context.device;
        let elem = self.precision.elem();
        let mut tokens = Vec::with_capacity(b * m * d);
        for start in (0..b).step_by(chunk) {
            let count = chunk.min(b - start);
            let staging = scoped(device, "the reduction", || {
                let x = storage_with(
                    &self.ledger,
                    device,
                    "features",
                    &elem_bytes(&features.values()[start * n * d..][..count * n * d], elem),
                );
                let p = storage_with(
                    &self.ledger,
                    device,
                    "projection",
                    bytemuck::cast_slice(&projection[start * m * n..][..count * m * n]),
                );
                let y = storage_output(
                    &self.ledger,
                    device,
                    "reduced tokens",
                    padded_size(count * m * d, e),
                    wgpu::BufferUsages::empty(),
                    poison,
                );
                let policy = match self.matmul.can_split() {
                    true => options.split_k.resolve(self.context.is_software()),
                    false => SplitK::Off,
                };
                let product = Product::new(count as u32, m as u32, d as u32, n as u32).split(
                    policy,
                    MatmulVariant::Tiled,
                    limit,
                );
                let step = Step {
                    name: "reduce",
                    flops: product.flops(),
                    bytes: product.bytes(4, e, e),
                };
                let mut passes = Passes::new(device, &self.context.queue, &self.ledger, false);
                let scratch = product.scratch_elements() * 4;
                if scratch > 0 {
                    passes.set_split_scratch(storage_output(
                        &self.ledger,
                        device,
                        "split-K partial products",
                        scratch,
                        wgpu::BufferUsages::empty(),
                        poison,
                    ));
                }
                self.matmul.encode(
                    &mut passes,
                    step,
                    MatmulVariant::Tiled,
                    &product,
                    Slice::whole(&p),
                    Slice::whole(&x),
                    Slice::whole(&y),
                );
                let (mut encoder, _, parameters) = passes.finish();
                let staging = copy_to_staging(&self.ledger, device, &mut encoder, &y);
                self.context.queue.submit([encoder.finish()]);
                drop(parameters);
                staging
            })?;
            let bytes = read_staging(device, &staging)?;
            tokens.extend(elem_values(&bytes, elem, count * m * d));
            self.context.check_alive()?;
        }
        Ok(tokens)
    }
}

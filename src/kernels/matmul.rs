//! `C = A B` per image (SPEC 4, steps 4 and 7): `shaders/matmul.wgsl`.

use super::{dispatch, pipeline, uniform};
use crate::shaders::ShaderSource;

/// Output columns and rows one workgroup covers (the shader's `tile_*` overrides' defaults).
pub const TILE_COLUMNS: u32 = 32;
/// See [`TILE_COLUMNS`].
pub const TILE_ROWS: u32 = 8;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    columns: u32,
    inner: u32,
    lhs_batch_stride: u32,
    rhs_batch_stride: u32,
    out_batch_stride: u32,
    padding: [u32; 2],
}

/// The sizes of one batched product `C (rows x columns) = A (rows x inner) B (inner x columns)`.
#[derive(Clone, Copy, Debug)]
pub struct Product {
    /// Images; each has its own `C`.
    pub batch: u32,
    /// Rows of `A` and `C`.
    pub rows: u32,
    /// Columns of `B` and `C`.
    pub columns: u32,
    /// Columns of `A`, rows of `B`.
    pub inner: u32,
    /// Whether `A` differs per image (else one `A` serves all).
    pub lhs_per_image: bool,
    /// Whether `B` differs per image (else one `B`, such as a weight, serves all).
    pub rhs_per_image: bool,
}

impl Product {
    /// Workgroups along x, y and z for this product.
    pub fn groups(&self) -> [u32; 3] {
        [
            self.columns.div_ceil(TILE_COLUMNS),
            self.rows.div_ceil(TILE_ROWS),
            self.batch,
        ]
    }
}

/// A matrix product kernel for one choice of element types.
pub struct Matmul {
    pipeline: wgpu::ComputePipeline,
}

impl Matmul {
    /// Builds the pipeline.
    pub fn new(device: &wgpu::Device, source: &ShaderSource) -> Self {
        Matmul {
            pipeline: pipeline(device, source),
        }
    }

    /// Records `out = lhs rhs` for every image of `product`.
    pub fn encode(
        &self,
        device: &wgpu::Device,
        encoder: &mut wgpu::CommandEncoder,
        product: &Product,
        lhs: &wgpu::Buffer,
        rhs: &wgpu::Buffer,
        out: &wgpu::Buffer,
    ) {
        let stride = |per_image: bool, size: u32| if per_image { size } else { 0 };
        let params = uniform(
            device,
            &Params {
                rows: product.rows,
                columns: product.columns,
                inner: product.inner,
                lhs_batch_stride: stride(product.lhs_per_image, product.rows * product.inner),
                rhs_batch_stride: stride(product.rhs_per_image, product.inner * product.columns),
                out_batch_stride: product.rows * product.columns,
                padding: [0; 2],
            },
        );
        dispatch(
            device,
            encoder,
            &self.pipeline,
            &[&params, lhs, rhs, out],
            product.groups(),
        );
    }
}

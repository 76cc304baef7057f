//! `S = (Q omega) K^T / sqrt(d_c)` within each query's key range (SPEC 4, step 5):
//! `shaders/scores.wgsl`.

use super::{dispatch, linear_groups, pipeline, uniform, ForwardShape, LINEAR_WORKGROUP};
use crate::shaders::ShaderSource;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    elements: u32,
    tokens: u32,
    queries: u32,
    channels: u32,
    scale: f32,
    padding: [u32; 3],
}

/// The scores kernel.
pub struct Scores {
    pipeline: wgpu::ComputePipeline,
}

impl Scores {
    /// Builds the pipeline.
    pub fn new(device: &wgpu::Device, source: &ShaderSource) -> Self {
        Scores {
            pipeline: pipeline(device, source),
        }
    }

    /// Records the scores of every query against the keys of its range (`key_ranges`: one
    /// `[first, end)` pair of u32 per query).
    #[allow(clippy::too_many_arguments)]
    pub fn encode(
        &self,
        device: &wgpu::Device,
        encoder: &mut wgpu::CommandEncoder,
        shape: &ForwardShape,
        queries: &wgpu::Buffer,
        keys: &wgpu::Buffer,
        omega: &wgpu::Buffer,
        key_ranges: &wgpu::Buffer,
        scores: &wgpu::Buffer,
    ) {
        let elements = shape.batch * shape.queries * shape.tokens;
        let params = uniform(
            device,
            &Params {
                elements,
                tokens: shape.tokens,
                queries: shape.queries,
                channels: shape.channels,
                scale: 1.0 / (shape.channels as f32).sqrt(),
                padding: [0; 3],
            },
        );
        dispatch(
            device,
            encoder,
            &self.pipeline,
            &[&params, queries, keys, omega, key_ranges, scores],
            linear_groups(elements, LINEAR_WORKGROUP),
        );
    }
}

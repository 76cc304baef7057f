//! `Q_in = pool(Xp)` (SPEC 4, step 3): `shaders/pooling.wgsl`.

use super::{dispatch, linear_groups, pipeline, ForwardShape, Passes, Slice, LINEAR_WORKGROUP};
use crate::gpu::shaders::ShaderSource;
use crate::profile::Step;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    elements: u32,
    tokens: u32,
    queries: u32,
    width: u32,
    grid_count: u32,
    token_start: u32,
    token_end: u32,
    accumulate: u32,
}

/// The pooling kernel.
pub struct Pooling {
    pipeline: wgpu::ComputePipeline,
}

impl Pooling {
    /// Builds the pipeline.
    pub fn new(device: &wgpu::Device, source: &ShaderSource) -> Self {
        Pooling {
            pipeline: pipeline(device, source),
        }
    }

    /// Records `pooled = pool(tokens)`, or with `accumulate` `pooled += ...`, where
    /// `tokens` holds the tokens `held` of each image (all `0..n` unless an image is
    /// pooled range by range); `query_grids` holds 8 words per grid (see the shader's
    /// `QueryGrid`).
    #[allow(clippy::too_many_arguments)]
    pub fn encode(
        &self,
        passes: &mut Passes,
        step: Step,
        shape: &ForwardShape,
        tokens: Slice,
        held: std::ops::Range<u32>,
        accumulate: bool,
        query_grids: Slice,
        pooled: Slice,
    ) {
        let elements = shape.batch * shape.queries * shape.width;
        let params = Params {
            elements,
            tokens: shape.tokens,
            queries: shape.queries,
            width: shape.width,
            grid_count: shape.grid_count,
            token_start: held.start,
            token_end: held.end,
            accumulate: accumulate as u32,
        };
        dispatch(
            passes,
            step,
            &self.pipeline,
            &params,
            &[tokens, query_grids, pooled],
            linear_groups(elements, LINEAR_WORKGROUP),
        );
    }
}

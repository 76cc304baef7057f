//! `P = softmax(S)` per row within its key range, in place (SPEC 4, step 6):
//! `shaders/softmax.wgsl`.

use super::{dispatch, linear_groups, pipeline, ForwardShape, Passes, Slice};
use crate::gpu::shaders::ShaderSource;
use crate::profile::Step;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    tokens: u32,
    queries: u32,
    padding: u32,
}

/// The softmax kernel.
pub struct Softmax {
    pipeline: wgpu::ComputePipeline,
}

impl Softmax {
    /// Builds the pipeline.
    pub fn new(device: &wgpu::Device, source: &ShaderSource) -> Self {
        Softmax {
            pipeline: pipeline(device, source),
        }
    }

    /// Records the in-place softmax of every row of `scores` (one workgroup per row).
    pub fn encode(
        &self,
        passes: &mut Passes,
        step: Step,
        shape: &ForwardShape,
        key_ranges: Slice,
        scores: Slice,
    ) {
        let rows = shape.batch * shape.queries;
        let params = Params {
            rows,
            tokens: shape.tokens,
            queries: shape.queries,
            padding: 0,
        };
        dispatch(
            passes,
            step,
            &self.pipeline,
            &params,
            &[key_ranges, scores],
            linear_groups(rows, 1),
        );
    }
}

//! Tokens the application holds on the GPU, copied into the compressor's element type:
//! `shaders/ingest.wgsl`.

use super::{dispatch, linear_groups, pipeline, Passes, Slice, LINEAR_WORKGROUP};
use crate::gpu::shaders::ShaderSource;
use crate::profile::Step;
use crate::tensor::Dtype;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    count: u32,
    first: u32,
    dtype: u32,
    padding: u32,
}

/// The ingest kernel.
pub struct Ingest {
    pipeline: wgpu::ComputePipeline,
}

impl Ingest {
    /// Builds the pipeline.
    pub fn new(device: &wgpu::Device, source: &ShaderSource) -> Self {
        Ingest {
            pipeline: pipeline(device, source),
        }
    }

    /// Records the copy of `count` elements of `dtype`, starting `first` elements into
    /// `source`, to the start of `destination`.
    #[allow(clippy::too_many_arguments)]
    pub fn encode(
        &self,
        passes: &mut Passes,
        step: Step,
        source: Slice,
        dtype: Dtype,
        first: u32,
        count: u32,
        destination: Slice,
    ) {
        let params = Params {
            count,
            first,
            dtype: match dtype {
                Dtype::F32 => 0,
                Dtype::F16 => 1,
                Dtype::BF16 => 2,
            },
            padding: 0,
        };
        dispatch(
            passes,
            step,
            &self.pipeline,
            &params,
            &[source, destination],
            linear_groups(count, LINEAR_WORKGROUP),
        );
    }
}

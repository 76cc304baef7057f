//! `Xp = X + E` (SPEC 4, step 1): `shaders/position.wgsl`.

use super::{
    dispatch, linear_groups, pipeline, uniform, ForwardShape, Passes, Step, LINEAR_WORKGROUP,
};
use crate::shaders::ShaderSource;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    elements: u32,
    tokens: u32,
    width: u32,
    grid_count: u32,
    table_height: u32,
    table_width: u32,
    padding: [u32; 2],
}

/// The position kernel.
pub struct Position {
    pipeline: wgpu::ComputePipeline,
}

impl Position {
    /// Builds the pipeline.
    pub fn new(device: &wgpu::Device, source: &ShaderSource) -> Self {
        Position {
            pipeline: pipeline(device, source),
        }
    }

    /// Records `positioned = features + E`; `grids` holds `(offset, h, w, 0)` per grid.
    #[allow(clippy::too_many_arguments)]
    pub fn encode(
        &self,
        passes: &mut Passes,
        step: Step,
        shape: &ForwardShape,
        features: &wgpu::Buffer,
        table: &wgpu::Buffer,
        grids: &wgpu::Buffer,
        positioned: &wgpu::Buffer,
    ) {
        let elements = shape.batch * shape.tokens * shape.width;
        let params = uniform(
            passes.device,
            &Params {
                elements,
                tokens: shape.tokens,
                width: shape.width,
                grid_count: shape.grid_count,
                table_height: shape.table_height,
                table_width: shape.table_width,
                padding: [0; 2],
            },
        );
        dispatch(
            passes,
            step,
            &self.pipeline,
            &[&params, features, table, grids, positioned],
            linear_groups(elements, LINEAR_WORKGROUP),
        );
    }
}

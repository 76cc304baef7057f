//! `Xp = X + E` (SPEC 4, step 1): `shaders/position.wgsl`.

use super::{
    dispatch, pipeline, ForwardShape, Passes, Slice, Step, LINEAR_WORKGROUP,
    MAX_GROUPS_PER_DIMENSION,
};
use crate::layout::Layout;
use crate::reference::position_samples;
use crate::shaders::ShaderSource;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    tokens: u32,
    width: u32,
    padding: u32,
}

/// What the kernel reads per token: the four table cells (`row * gw + column`) the bilinear
/// resize blends, and their weights (zero for loose tokens).
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Sample {
    cells: [u32; 4],
    weights: [f32; 4],
}

/// One sample per token of `layout` for a `table_height x table_width` table.
pub fn samples(layout: &Layout, table_height: usize, table_width: usize) -> Vec<Sample> {
    let mut samples = vec![Sample::default(); layout.tokens()];
    for (token, corners) in position_samples(layout, table_height, table_width) {
        let sample = &mut samples[token];
        for (corner, (row, column, weight)) in corners.into_iter().enumerate() {
            sample.cells[corner] = (row * table_width + column) as u32;
            sample.weights[corner] = weight as f32;
        }
    }
    samples
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

    /// Records `positioned = features + E`; `samples` holds one `Sample` per token.
    #[allow(clippy::too_many_arguments)]
    pub fn encode(
        &self,
        passes: &mut Passes,
        step: Step,
        shape: &ForwardShape,
        features: Slice,
        table: Slice,
        samples: Slice,
        positioned: Slice,
    ) {
        let rows = shape.batch * shape.tokens;
        let params = Params {
            rows,
            tokens: shape.tokens,
            width: shape.width,
            padding: 0,
        };
        // One workgroup row of channels per token; tokens along y, then z past its limit.
        let row_groups = rows.min(MAX_GROUPS_PER_DIMENSION);
        dispatch(
            passes,
            step,
            &self.pipeline,
            &params,
            &[features, table, samples, positioned],
            [
                shape.width.div_ceil(LINEAR_WORKGROUP),
                row_groups,
                rows.div_ceil(row_groups),
            ],
        );
    }
}

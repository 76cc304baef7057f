//! The position table's part of the forward pass (SPEC 4, step 1), without ever forming
//! `Xp = X + E`: resizing (`E = resize(T)`) and pooling mix tokens linearly while the
//! projections mix channels, so `Xp w_k = X w_k + resize(T w_k)` and
//! `pool(Xp) w_q' = pool(X) w_q' + pool(resize(T w_q'))`. The table is projected once when
//! the weights are uploaded (`project_table`); `shaders/position.wgsl` resizes `T w_k` onto
//! the tokens, and `pooled_query_term` pools `resize(T w_q')` on the host (`m x d_c`, small).
//! What depends only on the layout is kept per layout (`PerLayout`), so that calls on one
//! layout compute it once.

use super::{
    dispatch, pipeline, ForwardShape, Passes, Slice, LINEAR_WORKGROUP, MAX_GROUPS_PER_DIMENSION,
};
use crate::profile::Step;

use crate::gpu::shaders::ShaderSource;
use crate::layout::Layout;
use crate::reference::position_samples;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    tokens: u32,
    width: u32,
    add_features: u32,
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

    /// Records `positioned = features + E`, or `E` alone without `features`, for tokens of
    /// `shape.width` channels (`table` has as many); `samples` holds one `Sample` per token.
    #[allow(clippy::too_many_arguments)]
    pub fn encode(
        &self,
        passes: &mut Passes,
        step: Step,
        shape: &ForwardShape,
        features: Option<Slice>,
        table: Slice,
        samples: Slice,
        positioned: Slice,
    ) {
        let rows = shape.batch * shape.tokens;
        let params = Params {
            rows,
            tokens: shape.tokens,
            width: shape.width,
            add_features: features.is_some() as u32,
        };
        // Without features the table stands in for the unread binding.
        let features = features.unwrap_or(table);
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

//! The position table's part of the forward pass (SPEC 4, step 1), without ever forming
//! `Xp = X + E`: resizing (`E = resize(T)`) and pooling mix tokens linearly while the
//! projections mix channels, so `Xp w_k = X w_k + resize(T w_k)` and
//! `pool(Xp) w_q' = pool(X) w_q' + pool(resize(T w_q'))`. The table is projected once when
//! the weights are uploaded (`project_table`); `shaders/position.wgsl` resizes `T w_k` onto
//! the tokens, and `pooled_query_term` pools `resize(T w_q')` on the host (`m x d_c`, small).
//! What depends only on the layout is kept per layout (`PerLayout`), so that calls on one
//! layout compute it once.

use super::{
    dispatch, pipeline, ForwardShape, Passes, Slice, Step, LINEAR_WORKGROUP,
    MAX_GROUPS_PER_DIMENSION,
};
use std::sync::{Arc, Mutex};

use crate::cpu::{multiply, pool, View};
use crate::layout::{Layout, Queries};
use crate::reference::position_samples;
use crate::shaders::ShaderSource;

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

/// `T w` (`cells x d_c`, f32) for a table `T` of `cells x d` and `w` of `d x d_c`.
pub fn project_table(table: &[f32], width: usize, w: &[f32], channels: usize) -> Vec<f32> {
    let cells = table.len() / width;
    let mut out = vec![0.0; cells * channels];
    multiply(
        View::row_major(table, cells, width),
        View::row_major(w, width, channels),
        &mut out,
    );
    out
}

/// `resize(T w)` (`n x d_c`, f32): a projected table (`table_height x table_width x d_c`)
/// resized onto every token of `layout` (zero for loose tokens).
pub fn resized_rows(
    layout: &Layout,
    projected: &[f32],
    table_height: usize,
    table_width: usize,
    channels: usize,
) -> Vec<f32> {
    let c = channels;
    let mut resized = vec![0.0f32; layout.tokens() * c];
    for (token, corners) in position_samples(layout, table_height, table_width) {
        let out = &mut resized[token * c..][..c];
        for (row, column, weight) in corners {
            if weight != 0.0 {
                let cell = &projected[(row * table_width + column) * c..][..c];
                let weight = weight as f32;
                out.iter_mut().zip(cell).for_each(|(o, v)| *o += weight * v);
            }
        }
    }
    resized
}

/// `pool(resize(T w_q'))` (`m x d_c`, f32): what the position table adds to the scaled
/// queries, from the projected table (`table_height x table_width x d_c`).
pub fn pooled_query_term(
    layout: &Layout,
    queries: &Queries,
    projected: &[f32],
    table_height: usize,
    table_width: usize,
    channels: usize,
) -> Vec<f32> {
    let c = channels;
    let resized = resized_rows(layout, projected, table_height, table_width, c);
    let mut pooled = vec![0.0f32; queries.count * c];
    pool(&resized, c, queries, &mut pooled);
    pooled
}

/// Layouts (with their query grids) a `PerLayout` remembers.
const REMEMBERED_LAYOUTS: usize = 8;

/// Values computed from a layout and its query grids alone, kept for the most recently used
/// layouts.
#[derive(Debug)]
pub struct PerLayout<V> {
    entries: Mutex<Vec<(Layout, Queries, Arc<V>)>>,
}

impl<V> Default for PerLayout<V> {
    fn default() -> Self {
        PerLayout {
            entries: Mutex::new(Vec::new()),
        }
    }
}

impl<V> PerLayout<V> {
    /// The value for `layout` and `queries`, computed by `make` the first time (and again
    /// once `REMEMBERED_LAYOUTS` other layouts have been used since).
    pub fn get(&self, layout: &Layout, queries: &Queries, make: impl FnOnce() -> V) -> Arc<V> {
        let mut entries = self.entries.lock().expect("per-layout values");
        if let Some(index) = entries
            .iter()
            .position(|(l, q, _)| l == layout && q == queries)
        {
            // Most recently used last.
            let entry = entries.remove(index);
            let value = Arc::clone(&entry.2);
            entries.push(entry);
            return value;
        }
        let value = Arc::new(make());
        if entries.len() == REMEMBERED_LAYOUTS {
            entries.remove(0);
        }
        entries.push((layout.clone(), queries.clone(), Arc::clone(&value)));
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Keep;

    #[test]
    fn per_layout_values_are_computed_once_per_recent_layout() {
        let memo = PerLayout::default();
        let keep = Keep::new(0.25).unwrap();
        let square = |side: usize| Layout::square(side * side).unwrap();
        let made = std::cell::Cell::new(0);
        let get = |side: usize| {
            let layout = square(side);
            memo.get(&layout, &layout.queries(keep), || {
                made.set(made.get() + 1);
                side
            })
        };
        assert_eq!(*get(4), 4);
        assert_eq!(*get(4), 4);
        assert_eq!(made.get(), 1, "the same layout again is remembered");
        for side in 5..12 {
            get(side);
        }
        assert_eq!(made.get(), 8);
        get(4);
        assert_eq!(made.get(), 8, "eight layouts are remembered");
        get(12);
        get(5);
        assert_eq!(made.get(), 10, "the least recently used one was let go");
    }
}

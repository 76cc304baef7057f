//! Host-side f32 math that the CPU path and the GPU engine's host-side terms share: adaptive
//! average pooling, the query weights' scaling, and the position table projected once (`ProjectedTable`) with its per-layout terms.
//!
//! Resizing (`E = resize(T)`) and pooling mix tokens linearly while the projections mix
//! channels, so `Xp w_k = X w_k + resize(T w_k)` and
//! `pool(Xp) w_q' = pool(X) w_q' + pool(resize(T w_q'))`: the table is projected once, and
//! `Xp = X + E` is never formed. What depends only on the layout is kept per layout
//! (`PerLayout`), so that calls on one layout compute it once.

use std::sync::{Arc, Mutex};

use crate::layout::{Layout, Queries, QueryGrid};
use crate::products::{product, View};
use crate::reference::position_samples;
use crate::weights::PMeta;

/// Step 3: adaptive average pooling into `pooled` (`m x d`).
pub(crate) fn pool(xp: &[f32], d: usize, queries: &Queries, pooled: &mut [f32]) {
    pool_rows(d, queries, pooled, |token, out| {
        out.iter_mut()
            .zip(&xp[token * d..][..d])
            .for_each(|(o, v)| *o += v);
    });
}

/// Step 3 over tokens read by `add_row(token, out)`, which adds token `token`'s `d` values
/// to `out`: pooling of tokens stored in any type. The queries' rows are pooled in parallel
/// (each in the same order as alone).
pub(crate) fn pool_rows(
    d: usize,
    queries: &Queries,
    pooled: &mut [f32],
    add_row: impl Fn(usize, &mut [f32]) + Sync,
) {
    use rayon::prelude::*;
    pooled.fill(0.0);
    for query_grid in &queries.grids {
        let grid = query_grid.grid;
        pooled[query_grid.query_offset * d..][..query_grid.len() * d]
            .par_chunks_mut(d)
            .enumerate()
            .for_each(|(index, out)| {
                let (i, j) = (index / query_grid.width, index % query_grid.width);
                let rows = QueryGrid::window(i, grid.height, query_grid.height);
                let columns = QueryGrid::window(j, grid.width, query_grid.width);
                for row in rows.clone() {
                    for column in columns.clone() {
                        add_row(grid.token(row, column), out);
                    }
                }
                let inverse = 1.0 / (rows.len() * columns.len()) as f32;
                out.iter_mut().for_each(|o| *o *= inverse);
            });
    }
}

/// `w_q diag(omega) / sqrt(d_c)`, row-major `d x d_c`, in f32.
pub(crate) fn scaled_query_weights(weights: &PMeta) -> Vec<f32> {
    let c = weights.channels();
    let scale = 1.0 / (c as f64).sqrt();
    let factors: Vec<f64> = weights.omega().iter().map(|&w| w as f64 * scale).collect();
    weights
        .w_q()
        .chunks_exact(c)
        .flat_map(|row| {
            row.iter()
                .zip(&factors)
                .map(|(&w, f)| (w as f64 * f) as f32)
        })
        .collect()
}

/// The position table `T` (`gh x gw x d`) projected once: `T w_k` and `T w_q'`
/// (`w_q' = w_q diag(omega) / sqrt(d_c)`), both `gh x gw x d_c` in f32, with their terms for
/// recent layouts. The CPU path uses both terms; the GPU engine uploads `T w_k` (its position
/// kernel resizes it on the device) and uses the query term.
#[derive(Debug)]
pub(crate) struct ProjectedTable {
    /// `T w_k`.
    pub keys: Vec<f32>,
    /// `T w_q'`.
    pub queries: Vec<f32>,
    /// Table rows `gh`.
    pub height: usize,
    /// Table columns `gw`.
    pub width: usize,
    channels: usize,
    /// `pool(resize(T w_q'))` (`m x d_c`) for recent layouts.
    query_terms: PerLayout<Vec<f32>>,
    /// `resize(T w_k)` (`n x d_c`) for recent layouts.
    key_terms: PerLayout<Vec<f32>>,
}

impl ProjectedTable {
    /// The projections of `weights`' table, if it has one; `w_q_scaled` is
    /// `scaled_query_weights(weights)`.
    pub fn of(weights: &PMeta, w_q_scaled: &[f32]) -> Option<Self> {
        let (d, c) = (weights.width(), weights.channels());
        weights.position().map(|table| ProjectedTable {
            keys: project_table(&table.values, d, weights.w_k(), c),
            queries: project_table(&table.values, d, w_q_scaled, c),
            height: table.height,
            width: table.width,
            channels: c,
            query_terms: PerLayout::default(),
            key_terms: PerLayout::default(),
        })
    }

    /// `pool(resize(T w_q'))` (`m x d_c`): what the table adds to the scaled queries.
    pub fn query_term(&self, layout: &Layout, queries: &Queries) -> Arc<Vec<f32>> {
        self.query_terms.get(layout, queries, || {
            let c = self.channels;
            let resized = resized_rows(layout, &self.queries, self.height, self.width, c);
            let mut pooled = vec![0.0f32; queries.count * c];
            pool(&resized, c, queries, &mut pooled);
            pooled
        })
    }

    /// `resize(T w_k)` (`n x d_c`): what the table adds to the keys.
    pub fn key_term(&self, layout: &Layout, queries: &Queries) -> Arc<Vec<f32>> {
        self.key_terms.get(layout, queries, || {
            resized_rows(layout, &self.keys, self.height, self.width, self.channels)
        })
    }
}

/// `T w` (`cells x d_c`, f32) for a table `T` of `cells x d` and `w` of `d x d_c`.
fn project_table(table: &[f32], width: usize, w: &[f32], channels: usize) -> Vec<f32> {
    let cells = table.len() / width;
    let mut out = vec![0.0; cells * channels];
    product(
        View::row_major(table, cells, width),
        View::row_major(w, width, channels),
        &mut out,
    );
    out
}

/// `resize(T w)` (`n x d_c`, f32): a projected table (`table_height x table_width x d_c`)
/// resized onto every token of `layout` (zero for loose tokens).
fn resized_rows(
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

/// Layouts (with their query grids) a `PerLayout` remembers.
const REMEMBERED_LAYOUTS: usize = 8;

/// Values computed from a layout and its query grids alone, kept for the most recently used
/// layouts.
#[derive(Debug)]
pub(crate) struct PerLayout<V> {
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

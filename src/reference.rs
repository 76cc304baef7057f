//! The float64 evaluation of SPEC section 4, one function per step, written after the spec and
//! nothing else. It is the CPU backend and the reference every kernel is tested against.

use crate::layout::{Layout, Queries, QueryGrid, Scope};
use crate::tensor::Features;
use crate::weights::{PMeta, PositionTable};

/// What the forward pass hands out for a batch: `Y` (`b x m x d`) and `P` (`b x m x n`).
#[derive(Clone, Debug)]
pub struct Reference {
    /// Reduced tokens `Y = P X`, `b x m x d`.
    pub tokens: Vec<f64>,
    /// Compression projection `P`, `b x m x n`.
    pub projection: Vec<f64>,
}

/// The whole forward pass for every image of `features` (shapes already checked).
pub fn forward(
    features: &Features,
    weights: &PMeta,
    layout: &Layout,
    queries: &Queries,
    scope: Scope,
) -> Reference {
    let (n, d, c) = (features.tokens(), features.width(), weights.channels());
    let embedding = position_embedding(layout, weights.position(), d);
    let mut tokens = Vec::with_capacity(features.batch() * queries.count * d);
    let mut projection = Vec::with_capacity(features.batch() * queries.count * n);
    for image in 0..features.batch() {
        let x = features.image(image);
        let positioned = add_position(x, &embedding);
        let pooled = pool(&positioned, d, queries);
        let query = project(&pooled, weights.w_q(), d, c);
        let key = project(&positioned, weights.w_k(), d, c);
        let score = scores(&query, &key, weights.omega(), queries, scope, n);
        let p = softmax_rows(&score, n);
        tokens.extend(reduce(&p, x, n, d));
        projection.extend(p);
    }
    Reference { tokens, projection }
}

/// Step 1, per axis: the source cells and the weight on the upper one for output cell `index`
/// when a table of `input` cells is resized to `output` cells (half-pixel centres).
pub fn resize_axis(index: usize, input: usize, output: usize) -> (usize, usize, f64) {
    let source = ((index as f64 + 0.5) * input as f64 / output as f64 - 0.5).max(0.0);
    let lower = source.floor() as usize;
    let upper = (lower + 1).min(input - 1);
    (lower, upper, source - lower as f64)
}

/// Step 1, per token: for every token of every grid, the four table cells (row, column) that
/// the bilinear resize of a `table_height x table_width` table blends, with their weights.
pub fn position_samples(
    layout: &Layout,
    table_height: usize,
    table_width: usize,
) -> impl Iterator<Item = (usize, [(usize, usize, f64); 4])> + '_ {
    layout.grids().iter().flat_map(move |grid| {
        (0..grid.len()).map(move |local| {
            let (row, column) = (local / grid.width, local % grid.width);
            let (top, bottom, down) = resize_axis(row, table_height, grid.height);
            let (left, right, across) = resize_axis(column, table_width, grid.width);
            let corners = [
                (top, left, (1.0 - down) * (1.0 - across)),
                (top, right, (1.0 - down) * across),
                (bottom, left, down * (1.0 - across)),
                (bottom, right, down * across),
            ];
            (grid.token_of_cell(local), corners)
        })
    })
}

/// Step 1: `E` (`n x d`), the position table resized bilinearly onto each grid; zero for loose
/// tokens and everywhere when there is no table.
pub fn position_embedding(layout: &Layout, table: Option<&PositionTable>, d: usize) -> Vec<f64> {
    let mut embedding = vec![0.0; layout.tokens() * d];
    let Some(table) = table else {
        return embedding;
    };
    for (token, corners) in position_samples(layout, table.height, table.width) {
        let out = &mut embedding[token * d..][..d];
        for (row, column, weight) in corners {
            let cell = &table.values[(row * table.width + column) * d..][..d];
            for (o, v) in out.iter_mut().zip(cell) {
                *o += weight * *v as f64;
            }
        }
    }
    embedding
}

/// Step 1: `Xp = X + E`.
pub fn add_position(x: &[f32], embedding: &[f64]) -> Vec<f64> {
    x.iter()
        .zip(embedding)
        .map(|(x, e)| *x as f64 + e)
        .collect()
}

/// Step 3: adaptive average pooling of `Xp` over each grid to its query grid (`m x d`).
pub fn pool(positioned: &[f64], d: usize, queries: &Queries) -> Vec<f64> {
    let mut pooled = vec![0.0; queries.count * d];
    for query_grid in &queries.grids {
        let grid = query_grid.grid;
        for i in 0..query_grid.height {
            let rows = QueryGrid::window(i, grid.height, query_grid.height);
            for j in 0..query_grid.width {
                let columns = QueryGrid::window(j, grid.width, query_grid.width);
                let query = query_grid.query_offset + i * query_grid.width + j;
                let out = &mut pooled[query * d..][..d];
                for row in rows.clone() {
                    for column in columns.clone() {
                        let token = grid.token(row, column);
                        for (o, v) in out.iter_mut().zip(&positioned[token * d..][..d]) {
                            *o += v;
                        }
                    }
                }
                let count = (rows.len() * columns.len()) as f64;
                out.iter_mut().for_each(|o| *o /= count);
            }
        }
    }
    pooled
}

/// Step 4: `A W` for `A` (`rows x d`) and `W` (`d x c`, f32).
pub fn project(a: &[f64], w: &[f32], d: usize, c: usize) -> Vec<f64> {
    let rows = a.len() / d;
    let mut out = vec![0.0; rows * c];
    for r in 0..rows {
        let out_row = &mut out[r * c..][..c];
        for (k, a) in a[r * d..][..d].iter().enumerate() {
            for (o, w) in out_row.iter_mut().zip(&w[k * c..][..c]) {
                *o += a * *w as f64;
            }
        }
    }
    out
}

/// Step 5: `S[i, j] = sum_c Q[i,c] omega[c] K[j,c] / sqrt(d_c)` for `j` in the query's scope;
/// negative infinity (no weight) outside it.
pub fn scores(
    query: &[f64],
    key: &[f64],
    omega: &[f32],
    queries: &Queries,
    scope: Scope,
    n: usize,
) -> Vec<f64> {
    let c = omega.len();
    let scale = 1.0 / (c as f64).sqrt();
    let mut out = vec![f64::NEG_INFINITY; queries.count * n];
    for i in 0..queries.count {
        let q = &query[i * c..][..c];
        for j in queries.keys(i, scope, n).iter() {
            let k = &key[j * c..][..c];
            let dot: f64 = (0..c).map(|ch| q[ch] * omega[ch] as f64 * k[ch]).sum();
            out[i * n + j] = dot * scale;
        }
    }
    out
}

/// Step 6: the stable softmax of each row of `S` (`n` wide); excluded entries become exactly 0.
pub fn softmax_rows(scores: &[f64], n: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(scores.len());
    for row in scores.chunks_exact(n) {
        let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let exp: Vec<f64> = row.iter().map(|s| (s - max).exp()).collect();
        let sum: f64 = exp.iter().sum();
        out.extend(exp.iter().map(|e| e / sum));
    }
    out
}

/// Step 7: `Y = P X` (`m x d`), with `X` the features before the position table.
pub fn reduce(p: &[f64], x: &[f32], n: usize, d: usize) -> Vec<f64> {
    let m = p.len() / n;
    let mut out = vec![0.0; m * d];
    for i in 0..m {
        let out_row = &mut out[i * d..][..d];
        for (j, weight) in p[i * n..][..n].iter().enumerate() {
            if *weight == 0.0 {
                continue;
            }
            for (o, x) in out_row.iter_mut().zip(&x[j * d..][..d]) {
                *o += weight * *x as f64;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{Grid, Keep};

    #[test]
    fn resize_matches_hand_values() {
        // same size: identity
        assert_eq!(resize_axis(3, 5, 5), (3, 4, 0.0));
        // 2 -> 4: s = (i + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25 -> clamp at 0
        assert_eq!(resize_axis(0, 2, 4), (0, 1, 0.0));
        assert_eq!(resize_axis(1, 2, 4), (0, 1, 0.25));
        assert_eq!(resize_axis(3, 2, 4), (1, 1, 0.25));
        // 4 -> 2: s = (i + 0.5) * 2 - 0.5 = 0.5, 2.5
        assert_eq!(resize_axis(1, 4, 2), (2, 3, 0.5));
    }

    #[test]
    fn pooling_averages_the_window() {
        // one 2x3 grid of 1-wide tokens after a loose token, pooled to 1x2 at keep 1/3
        let layout = Layout::new(7, vec![Grid::new(1, 2, 3)]).unwrap();
        let queries = layout.queries(Keep::new(0.25).unwrap());
        assert_eq!((queries.grids[0].height, queries.grids[0].width), (1, 2));
        let x = [100.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        // columns 0..2 and 1..3 of both rows
        assert_eq!(pool(&x, 1, &queries), vec![3.0, 4.0]);
    }

    #[test]
    fn softmax_rows_sum_to_one_and_zero_outside() {
        let s = [1.0, f64::NEG_INFINITY, 3.0, 0.5, 0.5, 0.5];
        let p = softmax_rows(&s, 3);
        assert_eq!(p[1], 0.0);
        assert!((p[0] + p[2] - 1.0).abs() < 1e-15);
        assert!((p[3] - 1.0 / 3.0).abs() < 1e-15);
    }
}

//! The spatial methods: `pool` (each row uniform over its pooling window), `sample` (the
//! cell at the centre of each window) and `random` (a uniformly random subset of the grid or,
//! at scope `image`, of the whole image).

use rand::seq::index::sample;
use rand_chacha::ChaCha8Rng;

use super::Row;
use crate::layout::QueryGrid;

/// Adaptive average pooling (SPEC section 4, step 3) as rows of `P`: query `(i, j)` weighs
/// the tokens of its window equally.
pub fn pool(query_grid: &QueryGrid) -> Vec<Row> {
    let grid = query_grid.grid;
    let mut rows = Vec::with_capacity(query_grid.len());
    for i in 0..query_grid.height {
        let window_rows = QueryGrid::window(i, grid.height, query_grid.height);
        for j in 0..query_grid.width {
            let window_columns = QueryGrid::window(j, grid.width, query_grid.width);
            let weight = 1.0 / (window_rows.len() * window_columns.len()) as f32;
            let row = window_rows
                .clone()
                .flat_map(|r| window_columns.clone().map(move |c| (r, c)))
                .map(|(r, c)| (grid.token(r, c), weight))
                .collect();
            rows.push(row);
        }
    }
    rows
}

/// The cell `sample` keeps for query `(i, j)`: row `floor((i + 0.5) * h / hq)`, column
/// `floor((j + 0.5) * w / wq)`, as a token index.
pub fn sample_cell(query_grid: &QueryGrid, i: usize, j: usize) -> usize {
    let grid = query_grid.grid;
    // floor((i + 0.5) * h / hq) == floor((2i + 1) * h / (2 hq)), in exact integers.
    let row = (2 * i + 1) * grid.height / (2 * query_grid.height);
    let column = (2 * j + 1) * grid.width / (2 * query_grid.width);
    grid.token(row, column)
}

/// Equidistant sampling: one-hot rows at `sample_cell`.
pub fn sample_rows(query_grid: &QueryGrid) -> Vec<Row> {
    (0..query_grid.height)
        .flat_map(|i| (0..query_grid.width).map(move |j| (i, j)))
        .map(|(i, j)| vec![(sample_cell(query_grid, i, j), 1.0)])
        .collect()
}

/// `hq * wq` distinct tokens of the grid drawn uniformly from `rng`, in token order.
pub fn random(query_grid: &QueryGrid, rng: &mut ChaCha8Rng) -> Vec<Row> {
    let grid = query_grid.grid;
    let mut chosen = sample(rng, grid.len(), query_grid.len()).into_vec();
    chosen.sort_unstable();
    chosen
        .into_iter()
        .map(|cell| vec![(grid.token_of_cell(cell), 1.0)])
        .collect()
}

/// `count` distinct tokens of `0..n` (the whole image, loose tokens included) drawn uniformly
/// from `rng`, in token order: `random` at scope `image`.
pub fn random_image(n: usize, count: usize, rng: &mut ChaCha8Rng) -> Vec<Row> {
    let mut chosen = sample(rng, n, count).into_vec();
    chosen.sort_unstable();
    chosen.into_iter().map(|token| vec![(token, 1.0)]).collect()
}

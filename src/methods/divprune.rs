//! `divprune`: greedy max-min diversity (DivPrune, Alvar et al., CVPR 2025; the authors'
//! `DivPrune` in `LLaVA/llava/model/llava_arch.py`) on one grid. Distances are
//! `1 - cosine`. The first kept token is the one farthest from its nearest neighbour; each
//! next one is the token whose distance to the nearest kept token is largest (ties: the lower
//! token index). Rows are one-hot, in token order (the authors sort the kept indices).
//!
//! One deliberate difference: the authors' loop scores every token, kept ones included (a
//! kept token scores its distance to itself, about 0), so on duplicated tokens, where every
//! score is 0, it picks the same token again and keeps fewer than it was asked to. Here a kept
//! token is never a candidate again, so the `hq * wq` rows are always distinct tokens.

use super::similarity::{argmax, cosines, unit_rows};
use super::Row;
use crate::layout::QueryGrid;

/// The rows of `P` for one grid of `x` (`n x width`).
pub fn divprune(x: &[f32], width: usize, query_grid: &QueryGrid) -> Vec<Row> {
    let grid = query_grid.grid;
    let count = grid.len();
    let unit = unit_rows(x, width, grid.tokens());
    let similarity = cosines(&unit, &unit, width);
    let distance = |i: usize, j: usize| 1.0 - similarity[i * count + j];
    let first = if count == 1 {
        0
    } else {
        let nearest = (0..count).map(|i| {
            (0..count)
                .filter(|&j| j != i)
                .map(|j| distance(i, j))
                .fold(f64::INFINITY, f64::min)
        });
        argmax(nearest).expect("a grid holds a token")
    };
    let mut kept = vec![first];
    let mut nearest_kept: Vec<f64> = (0..count).map(|j| distance(first, j)).collect();
    nearest_kept[first] = f64::NEG_INFINITY;
    while kept.len() < query_grid.len() {
        let next = argmax(nearest_kept.iter().copied()).expect("a grid holds a token");
        kept.push(next);
        for (j, nearest) in nearest_kept.iter_mut().enumerate() {
            *nearest = nearest.min(distance(next, j));
        }
        nearest_kept[next] = f64::NEG_INFINITY;
    }
    kept.sort_unstable();
    kept.into_iter()
        .map(|cell| vec![(grid.token_of_cell(cell), 1.0)])
        .collect()
}

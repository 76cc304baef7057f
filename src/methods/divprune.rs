//! `divprune`: greedy max-min diversity (DivPrune, Alvar et al., CVPR 2025; the authors'
//! `DivPrune` in `LLaVA/llava/model/llava_arch.py`) among a set of candidate tokens: one grid
//! at scope `grid`, every token of the image (loose ones included) at scope `image`, as the
//! authors prune the packed sequence the language model reads (SPEC section 4, v4). Distances
//! are `1 - cosine`. The first kept token is the one farthest from its nearest neighbour; each
//! next one is the token whose distance to the nearest kept token is largest (ties: the lower
//! token index). Rows are one-hot, in token order (the authors sort the kept indices).
//!
//! One deliberate difference: the authors' loop scores every token, kept ones included (a
//! kept token scores its distance to itself, about 0), so on duplicated tokens, where every
//! score is 0, it picks the same token again and keeps fewer than it was asked to. Here a kept
//! token is never a candidate again, so the rows are always distinct tokens.

use super::similarity::{argmax, cosines, unit_rows};
use super::Row;
use crate::layout::QueryGrid;

/// The rows of `P` for one grid of `x` (`n x width`): `hq * wq` of its tokens.
pub fn divprune(x: &[f32], width: usize, query_grid: &QueryGrid) -> Vec<Row> {
    let tokens: Vec<usize> = query_grid.grid.tokens().collect();
    one_hot(select(x, width, &tokens, query_grid.len()))
}

/// The `count` rows of `P` for the whole of `x` (`n x width`): `count` of all its tokens.
pub fn divprune_image(x: &[f32], width: usize, count: usize) -> Vec<Row> {
    let tokens: Vec<usize> = (0..x.len() / width).collect();
    one_hot(select(x, width, &tokens, count))
}

/// One-hot rows on `tokens`, in token order.
fn one_hot(mut tokens: Vec<usize>) -> Vec<Row> {
    tokens.sort_unstable();
    tokens.into_iter().map(|token| vec![(token, 1.0)]).collect()
}

/// `count` distinct tokens of `candidates` (at least one, at most all), in the order chosen.
fn select(x: &[f32], width: usize, candidates: &[usize], count: usize) -> Vec<usize> {
    let total = candidates.len();
    let unit = unit_rows(x, width, candidates.iter().copied());
    let similarity = cosines(&unit, &unit, width);
    let distance = |i: usize, j: usize| 1.0 - similarity[i * total + j];
    let first = if total == 1 {
        0
    } else {
        let nearest = (0..total).map(|i| {
            (0..total)
                .filter(|&j| j != i)
                .map(|j| distance(i, j))
                .fold(f64::INFINITY, f64::min)
        });
        argmax(nearest).expect("candidates are not empty")
    };
    let mut kept = vec![first];
    let mut nearest_kept: Vec<f64> = (0..total).map(|j| distance(first, j)).collect();
    nearest_kept[first] = f64::NEG_INFINITY;
    while kept.len() < count {
        let next = argmax(nearest_kept.iter().copied()).expect("candidates are not empty");
        kept.push(next);
        for (j, nearest) in nearest_kept.iter_mut().enumerate() {
            *nearest = nearest.min(distance(next, j));
        }
        nearest_kept[next] = f64::NEG_INFINITY;
    }
    kept.into_iter().map(|index| candidates[index]).collect()
}

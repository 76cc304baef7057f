//! `tome`: bipartite soft matching (Token Merging, Bolya et al., ICLR 2023; the authors'
//! `bipartite_soft_matching` and `merge_wavg` in `tome/merge.py`), repeated on one grid
//! until it holds `hq * wq` tokens, as a ViT with ToMe in every block would.
//!
//! A round over `t` tokens splits them by place into `A` (even places) and `B` (odd places),
//! matches every `A` token to its most similar `B` token (cosine), and merges the `r` best
//! matched `A` tokens into their matches, `r = min(floor(t / 2), tokens still to remove)`
//! (ToMe removes at most half, `t // 2`, per round). Merges are size-weighted averages, so a
//! merged token is the plain mean of the input tokens it holds and its row of `P` is uniform
//! over them. The round's output is ToMe's: the unmerged `A` tokens in order of their best
//! score (highest first), then the `B` tokens in their order; the next round alternates over
//! that order. The similarity of merged tokens is the cosine of their means (ToMe's next
//! block would use the keys of the merged token).

use super::similarity::{argmax, cosines, push_unit};
use super::Row;
use crate::layout::QueryGrid;

/// A token during merging: the input tokens it holds and the float64 sum of their features.
struct Merged {
    members: Vec<usize>,
    sum: Vec<f64>,
}

/// The rows of `P` for one grid of `x` (`n x width`), in ToMe's final token order.
pub fn tome(x: &[f32], width: usize, query_grid: &QueryGrid) -> Vec<Row> {
    let grid = query_grid.grid;
    let mut tokens: Vec<Merged> = grid
        .tokens()
        .map(|token| Merged {
            members: vec![token],
            sum: x[token * width..][..width]
                .iter()
                .map(|&v| v as f64)
                .collect(),
        })
        .collect();
    while tokens.len() > query_grid.len() {
        // At most half of the tokens per round (`r = min(r, t // 2)` in ToMe).
        let merges = (tokens.len() - query_grid.len()).min(tokens.len() / 2);
        let (mut sources, mut destinations) = (Vec::new(), Vec::new());
        for (place, token) in tokens.into_iter().enumerate() {
            if place.is_multiple_of(2) {
                sources.push(token);
            } else {
                destinations.push(token);
            }
        }
        let unit = |side: &[Merged]| {
            let mut out = Vec::with_capacity(side.len() * width);
            side.iter().for_each(|t| push_unit(&mut out, &t.sum));
            out
        };
        let similarity = cosines(&unit(&sources), &unit(&destinations), width);
        let matches: Vec<(usize, f64)> = similarity
            .chunks_exact(destinations.len())
            .map(|row| {
                let best = argmax(row.iter().copied()).expect("B is not empty");
                (best, row[best])
            })
            .collect();
        // The sources by best score, highest first (ties: the earlier source).
        let mut order: Vec<usize> = (0..sources.len()).collect();
        order.sort_by(|&p, &q| matches[q].1.total_cmp(&matches[p].1).then(p.cmp(&q)));
        let mut sources: Vec<Option<Merged>> = sources.into_iter().map(Some).collect();
        for &source in &order[..merges] {
            let from = sources[source].take().expect("each source merges once");
            let into = &mut destinations[matches[source].0];
            into.members.extend(from.members);
            into.sum
                .iter_mut()
                .zip(&from.sum)
                .for_each(|(s, v)| *s += v);
        }
        tokens = order[merges..]
            .iter()
            .map(|&source| sources[source].take().expect("unmerged"))
            .chain(destinations)
            .collect();
    }
    tokens
        .into_iter()
        .map(|token| {
            let weight = 1.0 / token.members.len() as f32;
            token.members.into_iter().map(|m| (m, weight)).collect()
        })
        .collect()
}

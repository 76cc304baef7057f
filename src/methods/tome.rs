//! `tome`: bipartite soft matching (Token Merging, Bolya et al., ICLR 2023), repeated on one
//! grid until it holds `hq * wq` tokens. Each round splits the current tokens alternately
//! into `A` and `B`, matches every `A` token to its most similar `B` token (cosine of the
//! merged tokens' means), and merges the `r` best-matched `A` tokens into their matches as
//! size-weighted averages, with `r` as large as one round allows (`|A|`) but no larger than
//! the tokens still to remove. A merged token is the plain mean of the input tokens it holds,
//! so its row of `P` is uniform over them.

use super::similarity::{argmax, cosines, push_unit};
use super::Row;
use crate::layout::QueryGrid;

/// A token during merging: the input tokens it holds (the first is the smallest) and the
/// sum of their features.
struct Merged {
    members: Vec<usize>,
    sum: Vec<f32>,
}

/// The rows of `P` for one grid of `x` (`n x width`).
pub fn tome(x: &[f32], width: usize, query_grid: &QueryGrid) -> Vec<Row> {
    let grid = query_grid.grid;
    let mut tokens: Vec<Merged> = grid
        .tokens()
        .map(|token| Merged {
            members: vec![token],
            sum: x[token * width..][..width].to_vec(),
        })
        .collect();
    while tokens.len() > query_grid.len() {
        let remove = tokens.len() - query_grid.len();
        // A: the tokens at even places; B: at odd places.
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
        let matches: Vec<(usize, f32)> = similarity
            .chunks_exact(destinations.len())
            .map(|row| {
                let best = argmax(row.iter().copied()).expect("B is not empty");
                (best, row[best])
            })
            .collect();
        // The best-matched sources first (ties: the earlier source).
        let mut order: Vec<usize> = (0..sources.len()).collect();
        order.sort_by(|&p, &q| matches[q].1.total_cmp(&matches[p].1).then(p.cmp(&q)));
        let mut merged = vec![false; sources.len()];
        for &source in &order[..remove.min(sources.len())] {
            merged[source] = true;
            let from = &mut sources[source];
            let into = &mut destinations[matches[source].0];
            into.members.append(&mut from.members);
            into.sum
                .iter_mut()
                .zip(&from.sum)
                .for_each(|(s, v)| *s += v);
        }
        tokens = sources
            .into_iter()
            .zip(merged)
            .filter(|(_, merged)| !merged)
            .map(|(source, _)| source)
            .chain(destinations)
            .collect();
        for token in &mut tokens {
            token.members.sort_unstable();
        }
        // The next round alternates in the order of the tokens' first input token.
        tokens.sort_by_key(|token| token.members[0]);
    }
    tokens
        .into_iter()
        .map(|token| {
            let weight = 1.0 / token.members.len() as f32;
            token.members.into_iter().map(|m| (m, weight)).collect()
        })
        .collect()
}

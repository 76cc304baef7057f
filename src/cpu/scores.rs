//! Steps 5 and 6 a block of query rows at a time: the scores of each run of queries against
//! the keys they may see, and the softmax over each row's keys.

use std::ops::Range;

use rayon::prelude::*;

use super::stored::Stored;
use crate::layout::{Queries, Scope};
use crate::products::{Update, View, ViewMut};

/// Step 5 for the query rows `rows`: each query's scores against the keys it may see
/// (its image's tokens, or its grid's span), a block of key rows at a time.
pub(super) struct BlockScores<'a> {
    pub(super) queries: &'a Queries,
    pub(super) rows: Range<usize>,
    pub(super) scope: Scope,
    pub(super) n: usize,
}

impl BlockScores<'_> {
    /// `S = A B^T` for the tokens of `block`: `A` (`query`, `rows.len() x width`) holds the
    /// rows' scaled queries, or the folded ones (`width = d`); `B` (`keys`, `block.len() x
    /// width`) the block's keys, or its tokens. One product per run of queries that share
    /// their keys, written in place into `scores` (`rows.len() x n`). Entries outside a
    /// query's span are left for the softmax to clear.
    pub(super) fn fill<S: Stored>(
        &self,
        query: &[S],
        width: usize,
        keys: &[S],
        block: Range<usize>,
        scores: &mut [f32],
    ) {
        let (n, rows) = (self.n, &self.rows);
        // The runs: (first query row relative to `rows`, count, the tokens they see).
        let runs: Vec<(usize, usize, Range<usize>)> = match self.scope {
            Scope::Image => vec![(0, rows.len(), 0..n)],
            Scope::Grid => self
                .queries
                .grids
                .iter()
                .filter_map(|query_grid| {
                    let first = query_grid.query_offset.max(rows.start);
                    let last = (query_grid.query_offset + query_grid.len()).min(rows.end);
                    // The grid's span: tokens between its rows that are not its own get
                    // scores here and weight 0 in the softmax.
                    (first < last).then(|| {
                        (
                            first - rows.start,
                            last - first,
                            query_grid.grid.keys().span(),
                        )
                    })
                })
                .collect(),
        };
        for (first, count, span) in runs {
            let tokens = span.start.max(block.start)..span.end.min(block.end);
            if tokens.is_empty() {
                continue;
            }
            let key_rows = tokens.start - block.start..tokens.end - block.start;
            S::multiply(
                View::row_major(&query[first * width..(first + count) * width], count, width),
                View::row_major(
                    &keys[key_rows.start * width..key_rows.end * width],
                    key_rows.len(),
                    width,
                )
                .transposed(),
                ViewMut::strided(
                    &mut scores[first * n + tokens.start..],
                    count,
                    tokens.len(),
                    n,
                    1,
                ),
                Update::Overwrite,
            );
        }
    }
}

/// Step 6 in place: the stable softmax of each row (queries from `first`) over its keys,
/// zeros elsewhere.
pub(super) fn softmax_rows(
    scores: &mut [f32],
    queries: &Queries,
    first: usize,
    scope: Scope,
    n: usize,
) {
    scores
        .par_chunks_exact_mut(n)
        .enumerate()
        .for_each(|(row_index, row)| {
            let keys = queries.keys(first + row_index, scope, n);
            let range = keys.span();
            if !keys.is_contiguous() {
                // Tokens of the span that are not keys: no weight.
                for (token, s) in row[range.clone()].iter_mut().enumerate() {
                    if !keys.contains(range.start + token) {
                        *s = f32::NEG_INFINITY;
                    }
                }
            }
            let largest = row[range.clone()]
                .iter()
                .cloned()
                .fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0f64;
            for s in &mut row[range.clone()] {
                *s = (*s - largest).exp();
                sum += *s as f64;
            }
            let inverse = (1.0 / sum) as f32;
            row[range.clone()].iter_mut().for_each(|s| *s *= inverse);
            row[..range.start].fill(0.0);
            row[range.end..].fill(0.0);
        });
}

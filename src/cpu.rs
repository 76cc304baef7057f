//! The fast CPU path: the forward pass of SPEC section 4 in f32, its matrix products through
//! `matrixmultiply`'s cache-blocked, multi-threaded sgemm (`host_math`; one thread per
//! physical core, at most 4, fewer with `MATMUL_NUM_THREADS`), the scores in the cheaper
//! association for the shape. The float64 reference (`reference.rs`)
//! stays the yardstick it is tested against.

use crate::error::Result;
use crate::host_math::{multiply, pool, scaled_query_weights, ProjectedTable, View};
use crate::layout::{Layout, Queries, Scope};
use crate::options::{Association, KernelVariant};
use crate::profile::Step;
use crate::tensor::host_bytes;
use crate::tensor::Features;
use crate::weights::PMeta;

/// What runs the pass on `--backend cpu`, for people.
pub(crate) const CPU_DEVICE: &str = "cpu (f32, multi-threaded sgemm)";

/// The weights as the CPU path uses them, prepared once per compressor.
#[derive(Debug)]
pub(crate) struct CpuWeights {
    /// `w_q diag(omega) / sqrt(d_c)` (`d x d_c`), so that `pool(X)` times it is `Q'`.
    w_q_scaled: Vec<f32>,
    /// The position table projected once, if the weights have one.
    table: Option<ProjectedTable>,
}

impl CpuWeights {
    /// Scales the query weights and projects the table of `weights`.
    pub fn new(weights: &PMeta) -> Self {
        let w_q_scaled = scaled_query_weights(weights);
        let table = ProjectedTable::of(weights, &w_q_scaled);
        CpuWeights { w_q_scaled, table }
    }
}

/// Most bytes one block of score rows takes (64 MiB): the CPU path computes `S` and `P` a
/// block of query rows at a time, so its memory is bounded by this, never by `m x n`.
pub(crate) const SCORE_BLOCK_BYTES: usize = 64 << 20;

/// `Y` (`b x m x d`) and, when asked, `P` (`b x m x n`), in f32, the scores in `association`.
/// Fails only when the whole `P` asked for passes the host budget.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward(
    features: &Features,
    weights: &PMeta,
    prepared: &CpuWeights,
    layout: &Layout,
    queries: &Queries,
    scope: Scope,
    association: Association,
    want_projection: bool,
) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
    let (b, n, d, c, m) = (
        features.batch(),
        features.tokens(),
        features.width(),
        weights.channels(),
        queries.count,
    );
    host_bytes("the reduced tokens", &[b, m, d], 4)?;
    if want_projection {
        host_bytes("--save-projection's P", &[b, m, n], 4)?;
    }
    let mut tokens = vec![0.0f32; b * m * d];
    let mut projection = want_projection.then(|| vec![0.0f32; b * m * n]);
    // What the position table adds, the same for every image: pool(E) w_q' (m x d_c) and
    // E w_k (n x d_c).
    let table_terms = prepared.table.as_ref().map(|table| {
        (
            table.query_term(layout, queries),
            table.key_term(layout, queries),
        )
    });
    // The order of the scores: through K = Xp w_k, or through the folded queries
    // Q'' = Q' w_k^T (`Auto` takes the cheaper, as on the GPU).
    let association = association.resolve(KernelVariant::Tuned, n, m, d, c);
    let block_rows = (SCORE_BLOCK_BYTES / (4 * n.max(d))).clamp(1, m.max(1));
    // Buffers reused across images and blocks.
    let mut pooled = vec![0.0f32; m * d];
    let mut query = vec![0.0f32; m * c];
    let mut key = vec![
        0.0f32;
        if association == Association::Keys {
            n * c
        } else {
            0
        }
    ];
    let mut folded = Vec::new();
    let mut scores = Vec::new();
    let mut table_scores = Vec::new();
    for image in 0..b {
        let x = features.image(image);
        // Steps 1, 3 and 4: Q' = pool(X) w_q' + pool(E) w_q' (K below when the association
        // needs it).
        pool(x, d, queries, &mut pooled);
        multiply(
            View::row_major(&pooled, m, d),
            View::row_major(&prepared.w_q_scaled, d, c),
            &mut query,
        );
        if let Some((query_term, _)) = &table_terms {
            query
                .iter_mut()
                .zip(query_term.iter())
                .for_each(|(q, t)| *q += t);
        }
        if association == Association::Keys {
            // K = X w_k + E w_k.
            multiply(
                View::row_major(x, n, d),
                View::row_major(weights.w_k(), d, c),
                &mut key,
            );
            if let Some((_, key_term)) = &table_terms {
                key.iter_mut()
                    .zip(key_term.iter())
                    .for_each(|(k, t)| *k += t);
            }
        }
        for first in (0..m).step_by(block_rows) {
            let rows = first..(first + block_rows).min(m);
            let count = rows.len();
            let block_query = &query[rows.start * c..rows.end * c];
            scores.resize(count * n, 0.0);
            // Step 5: S over each query's keys (Q' carries omega / sqrt(d_c)).
            if association == Association::Keys {
                scores_in_scope(
                    block_query,
                    &key,
                    queries,
                    rows.clone(),
                    scope,
                    n,
                    c,
                    &mut scores,
                );
            } else {
                // Q'' = Q' w_k^T, then S = Q'' X^T + Q' (E w_k)^T.
                folded.resize(count * d, 0.0);
                multiply(
                    View::row_major(block_query, count, c),
                    View::row_major(weights.w_k(), d, c).transposed(),
                    &mut folded,
                );
                scores_in_scope(&folded, x, queries, rows.clone(), scope, n, d, &mut scores);
                if let Some((_, key_term)) = &table_terms {
                    table_scores.resize(count * n, 0.0);
                    scores_in_scope(
                        block_query,
                        key_term,
                        queries,
                        rows.clone(),
                        scope,
                        n,
                        c,
                        &mut table_scores,
                    );
                    scores
                        .iter_mut()
                        .zip(&table_scores)
                        .for_each(|(s, t)| *s += t);
                }
            }
            // Step 6.
            softmax_rows(&mut scores, queries, rows.start, scope, n);
            // Step 7: Y = P X for the block's rows.
            multiply(
                View::row_major(&scores, count, n),
                View::row_major(x, n, d),
                &mut tokens[(image * m + rows.start) * d..][..count * d],
            );
            if let Some(projection) = &mut projection {
                projection[(image * m + rows.start) * n..][..count * n].copy_from_slice(&scores);
            }
        }
    }
    Ok((tokens, projection))
}

/// The CPU path's forward pass as one step: its products' flops (in the association it takes)
/// and the features, weights and tokens it must move.
pub(crate) fn forward_step(
    features: &Features,
    weights: &PMeta,
    m: usize,
    association: Association,
) -> Step {
    let (n, d, c) = (features.tokens(), features.width(), weights.channels());
    let scores = association
        .resolve(KernelVariant::Tuned, n, m, d, c)
        .scores_work(n, m, d, c) as f64;
    let b = features.batch() as f64;
    let (n, m, d, c) = (n as f64, m as f64, d as f64, c as f64);
    Step {
        name: "forward",
        flops: 2.0 * b * (m * d * c + scores + m * n * d),
        bytes: 4.0 * (b * n * d + 2.0 * d * c + b * m * d),
    }
}

/// Step 5: `S = A B^T` for the query rows `rows` (`A`: their scaled queries, `count x c`, or
/// the folded ones with `c = d`) against `B` (`n x c`, the keys, or `Xp`), one product per
/// run of queries that share their keys; `scores` is `count x n`.
#[allow(clippy::too_many_arguments)]
fn scores_in_scope(
    query: &[f32],
    key: &[f32],
    queries: &Queries,
    rows: std::ops::Range<usize>,
    scope: Scope,
    n: usize,
    c: usize,
    scores: &mut [f32],
) {
    match scope {
        Scope::Image => multiply(
            View::row_major(query, rows.len(), c),
            View::row_major(key, n, c).transposed(),
            scores,
        ),
        Scope::Grid => {
            let mut block = Vec::new();
            for query_grid in &queries.grids {
                // The grid's queries inside `rows`, relative to `rows.start`.
                let first = query_grid.query_offset.max(rows.start);
                let last = (query_grid.query_offset + query_grid.len()).min(rows.end);
                if first >= last {
                    continue;
                }
                let (first, count) = (first - rows.start, last - first);
                // The grid's span: tokens between its rows that are not its own get scores
                // here and weight 0 in the softmax.
                let keys = query_grid.grid.keys().span();
                block.resize(count * keys.len(), 0.0);
                multiply(
                    View::row_major(&query[first * c..(first + count) * c], count, c),
                    View::row_major(&key[keys.start * c..keys.end * c], keys.len(), c).transposed(),
                    &mut block,
                );
                for (row, values) in block.chunks_exact(keys.len()).enumerate() {
                    scores[(first + row) * n + keys.start..][..keys.len()].copy_from_slice(values);
                }
            }
        }
    }
}

/// Step 6 in place: the stable softmax of each row (queries from `first`) over its keys,
/// zeros elsewhere.
fn softmax_rows(scores: &mut [f32], queries: &Queries, first: usize, scope: Scope, n: usize) {
    for (row_index, row) in scores.chunks_exact_mut(n).enumerate() {
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
    }
}

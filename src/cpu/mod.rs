//! The fast CPU path: the forward pass of SPEC section 4, its matrix products through the
//! `gemm` crate (`products`: kernels for the CPU found at run time, all cores), the scores in
//! the cheaper association for the shape, in blocks of query rows so that memory follows the
//! input. Tokens are read where they lie: f32 in place; f16 and bf16 (and anything under
//! `--precision bf16`) widened to f32 a block of token rows at a time, so no f32 copy of `X`
//! is ever made. The float64 reference (`reference.rs`) stays the yardstick it is tested
//! against.
//!
//! The rooms: `prepared.rs` (the storage and the weights prepared once), `stored.rs` (what
//! the products read: token rows and the stored element type), `scores.rs` (steps 5 and 6 a
//! block at a time); this file runs the pass and counts its cost.

use rayon::prelude::*;

use crate::error::Result;
use crate::host_math::pool_rows;
use crate::layout::{Layout, Queries, Scope};
use crate::options::{Association, KernelVariant, Precision};
use crate::products::{
    bf16_on_onednn, describe_onednn_bf16, product, Kernels, Update, View, ViewMut,
};
use crate::profile::Step;
use crate::tensor::{host_bytes, HostTokens};
use crate::weights::PMeta;

mod prepared;
mod scores;
mod stored;

pub(crate) use prepared::CpuWeights;
use prepared::Storage;
use scores::{softmax_rows, BlockScores};
use stored::{ImageRows, Stored};

/// What runs the pass on `--backend cpu`, for people.
pub(crate) fn cpu_device(precision: Precision) -> String {
    let kernels = Kernels::chosen().unwrap_or(Kernels::Simd);
    if precision == Precision::Bf16 && kernels != Kernels::OneDnn && bf16_on_onednn() {
        if let Some(bf16) = describe_onednn_bf16() {
            return format!("cpu (bf16, {bf16}; f32 products: {})", kernels.describe());
        }
    }
    format!("cpu ({}, {})", precision.name(), kernels.describe())
}

/// Most bytes one block of score rows takes (64 MiB): the CPU path computes `S` and `P` a
/// block of query rows at a time, so its memory is bounded by this, never by `m x n`.
pub(crate) const SCORE_BLOCK_BYTES: usize = 64 << 20;

/// Most bytes of token rows widened at a time (4 MiB: a few hundred rows of a wide model,
/// enough for the products to run at full speed, small enough to stay in cache).
const WIDEN_BLOCK_BYTES: usize = 4 << 20;

/// The block sizes of a pass (the tests make them tiny to cross many block edges).
#[derive(Clone, Copy, Debug)]
struct Blocks {
    /// Most bytes of one block of score rows.
    scores: usize,
    /// Most bytes of token rows widened at a time.
    widen: usize,
}

const BLOCKS: Blocks = Blocks {
    scores: SCORE_BLOCK_BYTES,
    widen: WIDEN_BLOCK_BYTES,
};

/// What a pass computes on, but for the tokens.
pub(crate) struct Call<'a> {
    pub weights: &'a PMeta,
    pub prepared: &'a CpuWeights,
    pub layout: &'a Layout,
    pub queries: &'a Queries,
    pub scope: Scope,
    pub association: Association,
}

/// `Y` (`b x m x d`) and, when asked, `P` (`b x m x n`), the scores in the call's
/// association. Fails only when the whole `P` asked for passes the host budget.
pub(crate) fn forward(
    features: HostTokens,
    call: &Call,
    want_projection: bool,
) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
    let onednn = Kernels::chosen().unwrap_or(Kernels::Simd) == Kernels::OneDnn
        || (call.prepared.storage == Storage::Bf16 && bf16_on_onednn());
    forward_in_blocks(features, call, want_projection, BLOCKS, onednn)
}

/// `forward` with the given block sizes; `onednn` for the products in oneDNN's shapes: the
/// keys transposed (`K^T = w_k^T X^T`, 2-4x faster there than `X w_k`), and under bf16
/// storage the large products bf16 x bf16 -> f32 (the tokens read as bf16 in place, or
/// converted a block at a time).
fn forward_in_blocks(
    features: HostTokens,
    call: &Call,
    want_projection: bool,
    blocks: Blocks,
    onednn: bool,
) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
    if onednn && call.prepared.storage == Storage::Bf16 {
        forward_stored::<half::bf16>(features, call, want_projection, blocks, true)
    } else {
        forward_stored::<f32>(features, call, want_projection, blocks, onednn)
    }
}

/// The pass with the large products reading `S`; the keys transposed when `keys_transposed`.
fn forward_stored<S: Stored>(
    features: HostTokens,
    call: &Call,
    want_projection: bool,
    blocks: Blocks,
    keys_transposed: bool,
) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
    let Call {
        weights,
        prepared,
        layout,
        queries,
        scope,
        association,
    } = *call;
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
    let storage = prepared.storage;
    let w_k = prepared.w_k(weights);
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
    let block_rows = (blocks.scores / (4 * n.max(d))).clamp(1, m.max(1));
    // Buffers reused across images and blocks.
    let mut query = vec![0.0f32; m * c];
    let mut key = vec![
        0.0f32;
        if association == Association::Keys {
            n * c
        } else {
            0
        }
    ];
    let (mut stored_query, mut stored_key, mut stored_folded, mut stored_projection) = (
        Vec::<S>::new(),
        Vec::<S>::new(),
        Vec::<S>::new(),
        Vec::<S>::new(),
    );
    let (mut widened, mut stored_pooled) = (Vec::<S>::new(), Vec::new());
    let mut folded = Vec::new();
    let mut scores = Vec::new();
    let mut table_scores = Vec::new();
    for image in 0..b {
        let x = ImageRows {
            values: features.values().slice(image * n * d..(image + 1) * n * d),
            n,
            d,
            storage,
            block_bytes: blocks.widen,
        };
        // Steps 1, 3 and 4: Q' = pool(X) w_q' + pool(E) w_q' (K below when the association
        // needs it). pool(X) is let go before the scores, the largest moment of the call.
        let mut pooled = vec![0.0f32; m * d];
        pool_rows(d, queries, &mut pooled, |token, out| x.add_row(token, out));
        S::multiply(
            View::row_major(S::read(&pooled, &mut stored_pooled), m, d),
            View::row_major(S::w_q(prepared), d, c),
            ViewMut::row_major(&mut query, m, c),
            Update::Overwrite,
        );
        drop(pooled);
        if let Some((query_term, _)) = &table_terms {
            query
                .iter_mut()
                .zip(query_term.iter())
                .for_each(|(q, t)| *q += t);
        }
        storage.round(&mut query);
        if association == Association::Keys {
            // K = X w_k + E w_k, a block of token rows at a time: as K^T (d_c x n) where
            // oneDNN runs the products.
            x.for_each_block(&mut widened, |block, rows| {
                if keys_transposed {
                    S::multiply(
                        View::row_major(S::w_k_transposed(prepared), c, d),
                        View::row_major(rows, block.len(), d).transposed(),
                        ViewMut::strided(&mut key[block.start..], c, block.len(), n, 1),
                        Update::Overwrite,
                    );
                } else {
                    S::multiply(
                        View::row_major(rows, block.len(), d),
                        View::row_major(S::w_k(prepared, weights), d, c),
                        ViewMut::row_major(
                            &mut key[block.start * c..block.end * c],
                            block.len(),
                            c,
                        ),
                        Update::Overwrite,
                    );
                }
            });
            if keys_transposed {
                // K^T back to K (n x d_c) as stored, plus E w_k: the scores read K's rows
                // (faster there than K^T's columns, measured).
                stored_key.resize(n * c, S::default());
                stored_key
                    .par_chunks_mut(c)
                    .enumerate()
                    .for_each(|(token, out)| {
                        for (channel, o) in out.iter_mut().enumerate() {
                            let term = table_terms
                                .as_ref()
                                .map_or(0.0, |(_, key_term)| key_term[token * c + channel]);
                            *o = S::convert(key[channel * n + token] + term, storage);
                        }
                    });
            } else {
                if let Some((_, key_term)) = &table_terms {
                    key.iter_mut()
                        .zip(key_term.iter())
                        .for_each(|(k, t)| *k += t);
                }
                S::store(&key, storage, &mut stored_key);
            }
            S::store(&query, storage, &mut stored_query);
        }
        for first in (0..m).step_by(block_rows) {
            let rows = first..(first + block_rows).min(m);
            let count = rows.len();
            let block_query = &query[rows.start * c..rows.end * c];
            scores.resize(count * n, 0.0);
            // Step 5: S over each query's keys (Q' carries omega / sqrt(d_c)).
            let block_scores = BlockScores {
                queries,
                rows: rows.clone(),
                scope,
                n,
            };
            if association == Association::Keys {
                let block_query = &stored_query[rows.start * c..rows.end * c];
                block_scores.fill(block_query, c, &stored_key, 0..n, &mut scores);
            } else {
                // Q'' = Q' w_k^T, then S = Q'' X^T + Q' (E w_k)^T.
                folded.resize(count * d, 0.0);
                product(
                    View::row_major(block_query, count, c),
                    View::row_major(w_k, d, c).transposed(),
                    &mut folded,
                );
                S::store(&folded, storage, &mut stored_folded);
                x.for_each_block(&mut widened, |block, keys| {
                    block_scores.fill(&stored_folded, d, keys, block, &mut scores)
                });
                if let Some((_, key_term)) = &table_terms {
                    table_scores.resize(count * n, 0.0);
                    block_scores.fill(block_query, c, key_term, 0..n, &mut table_scores);
                    scores
                        .iter_mut()
                        .zip(&table_scores)
                        .for_each(|(s, t)| *s += t);
                }
            }
            // Step 6.
            softmax_rows(&mut scores, queries, rows.start, scope, n);
            // Step 7: Y = P X for the block's rows, summed over blocks of tokens.
            let out = &mut tokens[(image * m + rows.start) * d..][..count * d];
            let weights_read = S::read(&scores, &mut stored_projection);
            x.for_each_block(&mut widened, |block, values| {
                let update = if block.start == 0 {
                    Update::Overwrite
                } else {
                    Update::Add(1.0)
                };
                S::multiply(
                    View::strided(&weights_read[block.start..], count, block.len(), n, 1),
                    View::row_major(values, block.len(), d),
                    ViewMut::row_major(out, count, d),
                    update,
                );
            });
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
    features: HostTokens,
    weights: &PMeta,
    m: usize,
    association: Association,
) -> Step {
    let (n, d, c) = (features.tokens(), features.width(), weights.channels());
    let scores = association
        .resolve(KernelVariant::Tuned, n, m, d, c)
        .scores_work(n, m, d, c) as f64;
    let b = features.batch() as f64;
    let element = features.values().dtype().size() as f64;
    let (n, m, d, c) = (n as f64, m as f64, d as f64, c as f64);
    Step {
        name: "forward",
        flops: 2.0 * b * (m * d * c + scores + m * n * d),
        bytes: element * b * n * d + 4.0 * (2.0 * d * c + b * m * d),
    }
}

#[cfg(test)]
mod tests;

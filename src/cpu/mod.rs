//! The fast CPU path: the forward pass of SPEC section 4, its matrix products through the
//! `gemm` crate (`products`: kernels for the CPU found at run time, all cores), the scores in
//! the cheaper association for the shape, in blocks of query rows so that memory follows the
//! input. Tokens are read where they lie: f32 in place; f16 and bf16 (and anything under
//! `--precision bf16`) widened to f32 a block of token rows at a time, so no f32 copy of `X`
//! is ever made. The float64 reference (`reference.rs`) stays the yardstick it is tested
//! against.

use std::ops::Range;

use rayon::prelude::*;

use crate::error::Result;
use crate::host_math::{pool_rows, scaled_query_weights, ProjectedTable};
use crate::layout::{Layout, Queries, Scope};
use crate::options::{Association, KernelVariant, Precision};
use crate::products::{
    bf16_on_onednn, describe_onednn_bf16, multiply, multiply_bf16, product, Kernels, Update, View,
    ViewMut,
};
use crate::profile::Step;
use crate::tensor::{host_bytes, HostTokens, HostValues};
use crate::weights::PMeta;

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

/// How the CPU path stores tokens, weights, queries and keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Storage {
    F32,
    Bf16,
}

impl Storage {
    /// `values` as stored: unchanged in f32, rounded to the nearest bf16 in bf16.
    fn round(self, values: &mut [f32]) {
        if self == Storage::Bf16 {
            values
                .par_chunks_mut(1 << 14)
                .for_each(|chunk| chunk.iter_mut().for_each(|v| *v = to_bf16(*v)));
        }
    }
}

fn to_bf16(value: f32) -> f32 {
    half::bf16::from_f32(value).to_f32()
}

/// The weights as the CPU path uses them, prepared once per compressor.
#[derive(Debug)]
pub(crate) struct CpuWeights {
    storage: Storage,
    /// `w_q diag(omega) / sqrt(d_c)` (`d x d_c`), so that `pool(X)` times it is `Q'`.
    w_q_scaled: Vec<f32>,
    /// `w_k` as stored, when that differs from the file's (bf16).
    w_k_rounded: Option<Vec<f32>>,
    /// The weights in the other forms the oneDNN path reads.
    key_weights: Box<KeyWeights>,
    /// The position table projected once (in f32), if the weights have one.
    table: Option<ProjectedTable>,
}

/// The weights as the oneDNN path reads them besides the stored f32.
#[derive(Debug)]
struct KeyWeights {
    /// The scaled query weights in bf16.
    w_q_bf16: Vec<half::bf16>,
    /// `w_k` as stored, in bf16.
    w_k_bf16: Vec<half::bf16>,
    /// `w_k^T` as stored (`d_c x d`), for the keys' product in the orientation oneDNN runs
    /// fastest (`K^T = w_k^T X^T`): in f32 (rounded under bf16) and in bf16.
    w_k_transposed: Vec<f32>,
    w_k_transposed_bf16: Vec<half::bf16>,
}

impl CpuWeights {
    /// Scales the query weights and projects the table of `weights`, stored at `precision`
    /// (`F32` or `Bf16`).
    pub fn new(weights: &PMeta, precision: Precision) -> Self {
        let storage = match precision {
            Precision::Bf16 => Storage::Bf16,
            _ => Storage::F32,
        };
        let w_q_scaled = scaled_query_weights(weights);
        let table = ProjectedTable::of(weights, &w_q_scaled);
        let mut w_q_scaled = w_q_scaled;
        storage.round(&mut w_q_scaled);
        let w_k_rounded = (storage == Storage::Bf16).then(|| {
            let mut w_k = weights.w_k().to_vec();
            storage.round(&mut w_k);
            w_k
        });
        let (d, c) = (weights.width(), weights.channels());
        let w_k = w_k_rounded.as_deref().unwrap_or(weights.w_k());
        let w_k_transposed: Vec<f32> = (0..c * d).map(|i| w_k[(i % d) * c + i / d]).collect();
        let w_k_transposed_bf16 = w_k_transposed
            .iter()
            .map(|&v| half::bf16::from_f32(v))
            .collect();
        let w_k_bf16 = w_k.iter().map(|&v| half::bf16::from_f32(v)).collect();
        let w_q_bf16 = w_q_scaled
            .iter()
            .map(|&v| half::bf16::from_f32(v))
            .collect();
        CpuWeights {
            storage,
            w_q_scaled,
            w_k_rounded,
            key_weights: Box::new(KeyWeights {
                w_q_bf16,
                w_k_bf16,
                w_k_transposed,
                w_k_transposed_bf16,
            }),
            table,
        }
    }

    fn w_k<'a>(&'a self, weights: &'a PMeta) -> &'a [f32] {
        self.w_k_rounded.as_deref().unwrap_or(weights.w_k())
    }
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

/// The `n x d` token rows of one image as the products read them.
struct ImageRows<'a> {
    values: HostValues<'a>,
    n: usize,
    d: usize,
    storage: Storage,
    block_bytes: usize,
}

impl<'a> ImageRows<'a> {
    /// The f32 values themselves, when they need neither widening nor rounding.
    fn in_place(&self) -> Option<&'a [f32]> {
        match (self.values, self.storage) {
            (HostValues::F32(values), Storage::F32) => Some(values),
            _ => None,
        }
    }

    /// Calls `visit(block, rows)` for consecutive blocks of token rows covering `0..n`, `rows`
    /// being the block's `block.len() x d` values as stored (`S`): the input itself when it
    /// is already that (f32 into f32 storage, bf16 into bf16), else converted (and rounded)
    /// into `scratch`.
    fn for_each_block<S: Stored>(
        &self,
        scratch: &mut Vec<S>,
        mut visit: impl FnMut(Range<usize>, &[S]),
    ) {
        if let Some(values) = S::in_place(self) {
            return visit(0..self.n, values);
        }
        let block_rows = (self.block_bytes / (4 * self.d)).clamp(1, self.n);
        for first in (0..self.n).step_by(block_rows) {
            let block = first..(first + block_rows).min(self.n);
            scratch.resize(block.len() * self.d, S::default());
            S::load(self, block.start, scratch);
            visit(block, scratch);
        }
    }

    /// Whether values read must be rounded to the storage (bf16 storage of f32 or f16).
    fn rounds(&self) -> bool {
        self.storage == Storage::Bf16 && !matches!(self.values, HostValues::BF16(_))
    }

    /// Rows from `first` widened (and rounded) into `out`, in parallel.
    fn widen(&self, first: usize, out: &mut [f32]) {
        const CHUNK: usize = 1 << 14;
        let start = first * self.d;
        let rounds = self.rounds();
        out.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(index, chunk)| {
                self.values.widen_into(start + index * CHUNK, chunk);
                if rounds {
                    chunk.iter_mut().for_each(|v| *v = to_bf16(*v));
                }
            });
    }

    /// Adds token `token`'s row to `out` (pooling), widened (and rounded) value by value.
    fn add_row(&self, token: usize, out: &mut [f32]) {
        let range = token * self.d..(token + 1) * self.d;
        let rounds = self.rounds();
        match self.values {
            HostValues::F32(values) if rounds => out
                .iter_mut()
                .zip(&values[range])
                .for_each(|(o, &v)| *o += to_bf16(v)),
            HostValues::F32(values) => out
                .iter_mut()
                .zip(&values[range])
                .for_each(|(o, &v)| *o += v),
            HostValues::F16(values) if rounds => out
                .iter_mut()
                .zip(&values[range])
                .for_each(|(o, v)| *o += to_bf16(v.to_f32())),
            HostValues::F16(values) => out
                .iter_mut()
                .zip(&values[range])
                .for_each(|(o, v)| *o += v.to_f32()),
            // bf16 is the top half of an f32.
            HostValues::BF16(values) => out
                .iter_mut()
                .zip(&values[range])
                .for_each(|(o, v)| *o += f32::from_bits(u32::from(v.to_bits()) << 16)),
        }
    }
}

/// The element type the big products read: f32 (f32 storage, and bf16 storage rounded in
/// f32 for kernels without bf16 arithmetic), or bf16 itself for oneDNN's bf16 x bf16 -> f32
/// (AMX, AVX-512 BF16).
trait Stored: Copy + Default + Send + Sync + 'static {
    /// `values` as stored (rounded to bf16 under bf16 storage) into `out`.
    fn store(values: &[f32], storage: Storage, out: &mut Vec<Self>);
    /// The image's tokens as they lie, when they are already of this type and storage.
    fn in_place<'a>(rows: &ImageRows<'a>) -> Option<&'a [Self]>;
    /// Token rows from `first` converted into `out`.
    fn load(rows: &ImageRows, first: usize, out: &mut [Self]);
    /// `out (+)= a b`.
    fn multiply(a: View<Self>, b: View<Self>, out: ViewMut<f32>, update: Update<f32>);
    /// `w_k^T` (`d_c x d`) of the prepared weights.
    fn w_k_transposed(prepared: &CpuWeights) -> &[Self];
    /// The scaled query weights (`d x d_c`) as stored.
    fn w_q(prepared: &CpuWeights) -> &[Self];
    /// One value as stored.
    fn convert(value: f32, storage: Storage) -> Self;
    /// `w_k` (`d x d_c`) as stored.
    fn w_k<'a>(prepared: &'a CpuWeights, weights: &'a PMeta) -> &'a [Self];
    /// f32 values (`P`) as this type reads them: themselves for f32, else converted into
    /// `scratch`.
    fn read<'b>(values: &'b [f32], scratch: &'b mut Vec<Self>) -> &'b [Self];
}

impl Stored for f32 {
    fn store(values: &[f32], storage: Storage, out: &mut Vec<f32>) {
        out.clear();
        out.extend_from_slice(values);
        storage.round(out);
    }

    fn in_place<'a>(rows: &ImageRows<'a>) -> Option<&'a [f32]> {
        rows.in_place()
    }

    fn load(rows: &ImageRows, first: usize, out: &mut [f32]) {
        rows.widen(first, out);
    }

    fn multiply(a: View<f32>, b: View<f32>, out: ViewMut<f32>, update: Update<f32>) {
        multiply(a, b, out, update);
    }

    fn w_k_transposed(prepared: &CpuWeights) -> &[f32] {
        &prepared.key_weights.w_k_transposed
    }

    fn w_q(prepared: &CpuWeights) -> &[f32] {
        &prepared.w_q_scaled
    }

    fn convert(value: f32, storage: Storage) -> f32 {
        match storage {
            Storage::F32 => value,
            Storage::Bf16 => to_bf16(value),
        }
    }

    fn w_k<'a>(prepared: &'a CpuWeights, weights: &'a PMeta) -> &'a [f32] {
        prepared.w_k(weights)
    }

    fn read<'b>(values: &'b [f32], _: &'b mut Vec<f32>) -> &'b [f32] {
        values
    }
}

impl Stored for half::bf16 {
    fn store(values: &[f32], _: Storage, out: &mut Vec<half::bf16>) {
        out.resize(values.len(), half::bf16::ZERO);
        out.par_chunks_mut(1 << 14)
            .zip(values.par_chunks(1 << 14))
            .for_each(|(out, values)| {
                out.iter_mut()
                    .zip(values)
                    .for_each(|(o, &v)| *o = half::bf16::from_f32(v))
            });
    }

    fn in_place<'a>(rows: &ImageRows<'a>) -> Option<&'a [half::bf16]> {
        match rows.values {
            HostValues::BF16(values) => Some(values),
            _ => None,
        }
    }

    fn load(rows: &ImageRows, first: usize, out: &mut [half::bf16]) {
        const CHUNK: usize = 1 << 12;
        let start = first * rows.d;
        out.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(index, chunk)| {
                let mut widened = [0.0f32; CHUNK];
                let widened = &mut widened[..chunk.len()];
                rows.values.widen_into(start + index * CHUNK, widened);
                chunk
                    .iter_mut()
                    .zip(widened.iter())
                    .for_each(|(o, &v)| *o = half::bf16::from_f32(v));
            });
    }

    fn multiply(a: View<half::bf16>, b: View<half::bf16>, out: ViewMut<f32>, update: Update<f32>) {
        multiply_bf16(a, b, out, update);
    }

    fn w_k_transposed(prepared: &CpuWeights) -> &[half::bf16] {
        &prepared.key_weights.w_k_transposed_bf16
    }

    fn w_q(prepared: &CpuWeights) -> &[half::bf16] {
        &prepared.key_weights.w_q_bf16
    }

    fn convert(value: f32, _: Storage) -> half::bf16 {
        half::bf16::from_f32(value)
    }

    fn w_k<'a>(prepared: &'a CpuWeights, _: &'a PMeta) -> &'a [half::bf16] {
        &prepared.key_weights.w_k_bf16
    }

    fn read<'b>(values: &'b [f32], scratch: &'b mut Vec<half::bf16>) -> &'b [half::bf16] {
        half::bf16::store(values, Storage::Bf16, scratch);
        scratch
    }
}

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

/// Step 5 for the query rows `rows`: each query's scores against the keys it may see
/// (its image's tokens, or its grid's span), a block of key rows at a time.
struct BlockScores<'a> {
    queries: &'a Queries,
    rows: Range<usize>,
    scope: Scope,
    n: usize,
}

impl BlockScores<'_> {
    /// `S = A B^T` for the tokens of `block`: `A` (`query`, `rows.len() x width`) holds the
    /// rows' scaled queries, or the folded ones (`width = d`); `B` (`keys`, `block.len() x
    /// width`) the block's keys, or its tokens. One product per run of queries that share
    /// their keys, written in place into `scores` (`rows.len() x n`). Entries outside a
    /// query's span are left for the softmax to clear.
    fn fill<S: Stored>(
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
fn softmax_rows(scores: &mut [f32], queries: &Queries, first: usize, scope: Scope, n: usize) {
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

#[cfg(test)]
mod tests;

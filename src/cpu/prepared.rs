//! How the CPU path stores values (f32, or rounded to bf16), and the weights in those forms,
//! prepared once per compressor: the scaled query weights, `w_k` as stored and transposed
//! for oneDNN, and the projected position table.

use rayon::prelude::*;

use crate::host_math::{scaled_query_weights, ProjectedTable};
use crate::options::Precision;
use crate::weights::PMeta;

/// How the CPU path stores tokens, weights, queries and keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Storage {
    F32,
    Bf16,
}

impl Storage {
    /// `values` as stored: unchanged in f32, rounded to the nearest bf16 in bf16.
    pub(super) fn round(self, values: &mut [f32]) {
        if self == Storage::Bf16 {
            values
                .par_chunks_mut(1 << 14)
                .for_each(|chunk| chunk.iter_mut().for_each(|v| *v = to_bf16(*v)));
        }
    }
}

pub(super) fn to_bf16(value: f32) -> f32 {
    half::bf16::from_f32(value).to_f32()
}

/// The weights as the CPU path uses them, prepared once per compressor.
#[derive(Debug)]
pub(crate) struct CpuWeights {
    pub(super) storage: Storage,
    /// `w_q diag(omega) / sqrt(d_c)` (`d x d_c`), so that `pool(X)` times it is `Q'`.
    pub(super) w_q_scaled: Vec<f32>,
    /// `w_k` as stored, when that differs from the file's (bf16).
    w_k_rounded: Option<Vec<f32>>,
    /// The weights in the other forms the oneDNN path reads.
    pub(super) key_weights: Box<KeyWeights>,
    /// The position table projected once (in f32), if the weights have one.
    pub(super) table: Option<ProjectedTable>,
}

/// The weights as the oneDNN path reads them besides the stored f32.
#[derive(Debug)]
pub(super) struct KeyWeights {
    /// The scaled query weights in bf16.
    pub(super) w_q_bf16: Vec<half::bf16>,
    /// `w_k` as stored, in bf16.
    pub(super) w_k_bf16: Vec<half::bf16>,
    /// `w_k^T` as stored (`d_c x d`), for the keys' product in the orientation oneDNN runs
    /// fastest (`K^T = w_k^T X^T`): in f32 (rounded under bf16) and in bf16.
    pub(super) w_k_transposed: Vec<f32>,
    pub(super) w_k_transposed_bf16: Vec<half::bf16>,
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

    pub(super) fn w_k<'a>(&'a self, weights: &'a PMeta) -> &'a [f32] {
        self.w_k_rounded.as_deref().unwrap_or(weights.w_k())
    }
}

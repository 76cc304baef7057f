//! What the products read: an image's token rows where they lie (or widened a block at a
//! time), and the element type of the large products (`Stored`: f32, or bf16 for oneDNN's
//! bf16 x bf16 -> f32) with the prepared weights in it.

use std::ops::Range;

use rayon::prelude::*;

use super::prepared::{to_bf16, CpuWeights, Storage};
use crate::products::{multiply, multiply_bf16, Update, View, ViewMut};
use crate::tensor::HostValues;
use crate::weights::PMeta;

/// The `n x d` token rows of one image as the products read them.
pub(super) struct ImageRows<'a> {
    pub(super) values: HostValues<'a>,
    pub(super) n: usize,
    pub(super) d: usize,
    pub(super) storage: Storage,
    pub(super) block_bytes: usize,
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
    pub(super) fn for_each_block<S: Stored>(
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
    pub(super) fn add_row(&self, token: usize, out: &mut [f32]) {
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
pub(super) trait Stored: Copy + Default + Send + Sync + 'static {
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

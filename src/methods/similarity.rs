//! Cosine similarity between tokens, through the CPU path's cache-blocked product.

use crate::products::{product, View};

/// `vector / ||vector||` appended to `out` (a zero vector stays zero).
pub fn push_unit(out: &mut Vec<f32>, vector: &[f32]) {
    let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
    let inverse = if norm > 0.0 { 1.0 / norm } else { 0.0 };
    out.extend(vector.iter().map(|v| v * inverse));
}

/// The rows `tokens` of `x` (`? x width`), each scaled to unit length, packed row-major.
pub fn unit_rows(x: &[f32], width: usize, tokens: impl Iterator<Item = usize>) -> Vec<f32> {
    let mut out = Vec::new();
    for token in tokens {
        push_unit(&mut out, &x[token * width..][..width]);
    }
    out
}

/// `a b^T` (`rows_a x rows_b`, row-major) for row-major `a` and `b` of `width` columns:
/// the cosine similarities when both hold unit rows.
pub fn cosines(a: &[f32], b: &[f32], width: usize) -> Vec<f32> {
    let (rows_a, rows_b) = (a.len() / width, b.len() / width);
    let mut out = vec![0.0; rows_a * rows_b];
    if rows_a > 0 && rows_b > 0 {
        product(
            View::row_major(a, rows_a, width),
            View::row_major(b, rows_b, width).transposed(),
            &mut out,
        );
    }
    out
}

/// The index of the largest value (the first of equals); `None` when empty.
pub fn argmax(values: impl Iterator<Item = f32>) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (index, value) in values.enumerate() {
        if best.is_none_or(|(_, top)| value > top) {
            best = Some((index, value));
        }
    }
    best.map(|(index, _)| index)
}

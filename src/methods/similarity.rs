//! Cosine similarity between tokens, in float64 through the CPU path's cache-blocked
//! product: the baselines' choices (nearest, best match, top k) then depend on the tokens
//! alone, not on which SIMD kernel rounded an f32 sum, and agree with a float64 statement
//! of each algorithm except on exact ties.

use crate::products::{product, View};

/// `vector / ||vector||` appended to `out` in float64 (a zero vector stays zero).
pub fn push_unit<T: Copy + Into<f64>>(out: &mut Vec<f64>, vector: &[T]) {
    let norm = vector
        .iter()
        .map(|&v| v.into() * v.into())
        .sum::<f64>()
        .sqrt();
    let inverse = if norm > 0.0 { 1.0 / norm } else { 0.0 };
    out.extend(vector.iter().map(|&v| v.into() * inverse));
}

/// The rows `tokens` of `x` (`? x width`), each scaled to unit length, packed row-major.
pub fn unit_rows(x: &[f32], width: usize, tokens: impl Iterator<Item = usize>) -> Vec<f64> {
    let mut out = Vec::new();
    for token in tokens {
        push_unit(&mut out, &x[token * width..][..width]);
    }
    out
}

/// `a b^T` (`rows_a x rows_b`, row-major) for row-major `a` and `b` of `width` columns:
/// the cosine similarities when both hold unit rows.
pub fn cosines(a: &[f64], b: &[f64], width: usize) -> Vec<f64> {
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
pub fn argmax(values: impl Iterator<Item = f64>) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (index, value) in values.enumerate() {
        if best.is_none_or(|(_, top)| value > top) {
            best = Some((index, value));
        }
    }
    best.map(|(index, _)| index)
}

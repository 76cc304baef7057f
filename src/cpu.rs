//! The fast CPU path: the forward pass of SPEC section 4 in f32 on all cores, its matrix
//! products through `matrixmultiply`'s cache-blocked, multi-threaded sgemm, the scores in the
//! cheaper association for the shape. The float64
//! reference (`reference.rs`) stays the yardstick it is tested against.

use crate::compress::{Association, KernelVariant};
use crate::layout::{Layout, Queries, QueryGrid, Scope};
use crate::reference::position_samples;
use crate::tensor::Features;
use crate::weights::PMeta;

/// A read-only matrix view: element `(r, c)` is `data[r * row_stride + c * column_stride]`.
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    data: &'a [f32],
    rows: usize,
    columns: usize,
    row_stride: usize,
    column_stride: usize,
}

impl<'a> View<'a> {
    pub(crate) fn row_major(data: &'a [f32], rows: usize, columns: usize) -> Self {
        View {
            data,
            rows,
            columns,
            row_stride: columns,
            column_stride: 1,
        }
    }

    pub(crate) fn transposed(self) -> Self {
        View {
            rows: self.columns,
            columns: self.rows,
            row_stride: self.column_stride,
            column_stride: self.row_stride,
            ..self
        }
    }

    fn last_index(&self) -> usize {
        (self.rows - 1) * self.row_stride + (self.columns - 1) * self.column_stride
    }
}

/// `out = a b` with `out` row-major `a.rows x b.columns` (overwritten).
pub(crate) fn multiply(a: View, b: View, out: &mut [f32]) {
    assert_eq!(a.columns, b.rows, "inner sizes differ");
    assert!(a.last_index() < a.data.len() && b.last_index() < b.data.len());
    assert_eq!(out.len(), a.rows * b.columns);
    // SAFETY: every index the kernel touches is inside the slices (checked above), and `out`
    // is a distinct, exclusively borrowed buffer of exactly `a.rows x b.columns`.
    unsafe {
        matrixmultiply::sgemm(
            a.rows,
            a.columns,
            b.columns,
            1.0,
            a.data.as_ptr(),
            a.row_stride as isize,
            a.column_stride as isize,
            b.data.as_ptr(),
            b.row_stride as isize,
            b.column_stride as isize,
            0.0,
            out.as_mut_ptr(),
            b.columns as isize,
            1,
        );
    }
}

/// `out = a b` in float64 for row-major `a` (`rows x inner`) and `b` (`inner x columns`, or
/// with `b_transposed` its transpose `columns x inner`, row-major); `out` row-major
/// `rows x columns` (overwritten). The fidelity measures' products.
pub(crate) fn multiply_f64(
    a: &[f64],
    inner: usize,
    b: &[f64],
    b_transposed: bool,
    out: &mut [f64],
) {
    let rows = a.len() / inner.max(1);
    let columns = b.len() / inner.max(1);
    assert!(a.len() == rows * inner && b.len() == columns * inner);
    assert_eq!(out.len(), rows * columns);
    if out.is_empty() || inner == 0 {
        out.fill(0.0);
        return;
    }
    let (b_row_stride, b_column_stride) = if b_transposed {
        (1, inner as isize)
    } else {
        (columns as isize, 1)
    };
    // SAFETY: `a` is `rows x inner` and `b` holds `inner x columns` elements read through
    // the strides above (checked lengths); `out` is a distinct, exclusively borrowed
    // `rows x columns`.
    unsafe {
        matrixmultiply::dgemm(
            rows,
            inner,
            columns,
            1.0,
            a.as_ptr(),
            inner as isize,
            1,
            b.as_ptr(),
            b_row_stride,
            b_column_stride,
            0.0,
            out.as_mut_ptr(),
            columns as isize,
            1,
        );
    }
}

/// `Y` (`b x m x d`) and, when asked, `P` (`b x m x n`), in f32, the scores in `association`.
pub fn forward(
    features: &Features,
    weights: &PMeta,
    layout: &Layout,
    queries: &Queries,
    scope: Scope,
    association: Association,
    want_projection: bool,
) -> (Vec<f32>, Option<Vec<f32>>) {
    let (n, d, c, m) = (
        features.tokens(),
        features.width(),
        weights.channels(),
        queries.count,
    );
    let mut tokens = vec![0.0f32; features.batch() * m * d];
    let mut projection = want_projection.then(|| vec![0.0f32; features.batch() * m * n]);
    // Buffers reused across images of the batch.
    let mut positioned = weights.position().map(|_| vec![0.0f32; n * d]);
    let mut pooled = vec![0.0f32; m * d];
    let mut query = vec![0.0f32; m * c];
    // The order of the scores: through K = Xp w_k, or through the folded queries
    // Q'' = Q' w_k^T (`Auto` takes the cheaper, as on the GPU).
    let association = association.resolve(KernelVariant::Tuned, n, m, d, c);
    let mut key = vec![
        0.0f32;
        if association == Association::Keys {
            n * c
        } else {
            0
        }
    ];
    let mut folded = vec![
        0.0f32;
        if association == Association::Keys {
            0
        } else {
            m * d
        }
    ];
    let mut scores = vec![0.0f32; m * n];
    for image in 0..features.batch() {
        let x = features.image(image);
        // Step 1: Xp = X + E (X itself without a table).
        let xp: &[f32] = match (&mut positioned, weights.position()) {
            (Some(buffer), Some(_)) => {
                buffer.copy_from_slice(x);
                add_position(buffer, layout, weights, d);
                buffer
            }
            _ => x,
        };
        // Steps 3 and 4 (Q only; K below when the association needs it).
        pool(xp, d, queries, &mut pooled);
        multiply(
            View::row_major(&pooled, m, d),
            View::row_major(weights.w_q(), d, c),
            &mut query,
        );
        // Step 5: fold omega / sqrt(d_c) into Q, then S over each query's key range.
        let scale = 1.0 / (c as f32).sqrt();
        for row in query.chunks_exact_mut(c) {
            row.iter_mut()
                .zip(weights.omega())
                .for_each(|(q, w)| *q *= w * scale);
        }
        if association == Association::Keys {
            // K = Xp w_k, then S = Q' K^T.
            multiply(
                View::row_major(xp, n, d),
                View::row_major(weights.w_k(), d, c),
                &mut key,
            );
            scores_in_scope(&query, &key, queries, scope, n, c, &mut scores);
        } else {
            // Q'' = Q' w_k^T, then S = Q'' Xp^T.
            multiply(
                View::row_major(&query, m, c),
                View::row_major(weights.w_k(), d, c).transposed(),
                &mut folded,
            );
            scores_in_scope(&folded, xp, queries, scope, n, d, &mut scores);
        }
        // Step 6.
        softmax_rows(&mut scores, queries, scope, n);
        // Step 7: Y = P X.
        multiply(
            View::row_major(&scores, m, n),
            View::row_major(x, n, d),
            &mut tokens[image * m * d..][..m * d],
        );
        if let Some(projection) = &mut projection {
            projection[image * m * n..][..m * n].copy_from_slice(&scores);
        }
    }
    (tokens, projection)
}

/// Step 1 in place: adds the position table, resized to each grid, to the tokens of `xp`.
fn add_position(xp: &mut [f32], layout: &Layout, weights: &PMeta, d: usize) {
    let Some(table) = weights.position() else {
        return;
    };
    for (token, corners) in position_samples(layout, table.height, table.width) {
        let out = &mut xp[token * d..][..d];
        for (row, column, weight) in corners {
            if weight != 0.0 {
                let weight = weight as f32;
                let cell = &table.values[(row * table.width + column) * d..][..d];
                out.iter_mut().zip(cell).for_each(|(o, v)| *o += weight * v);
            }
        }
    }
}

/// Step 3: adaptive average pooling into `pooled` (`m x d`).
fn pool(xp: &[f32], d: usize, queries: &Queries, pooled: &mut [f32]) {
    pooled.fill(0.0);
    for query_grid in &queries.grids {
        let grid = query_grid.grid;
        for i in 0..query_grid.height {
            let rows = QueryGrid::window(i, grid.height, query_grid.height);
            for j in 0..query_grid.width {
                let columns = QueryGrid::window(j, grid.width, query_grid.width);
                let out =
                    &mut pooled[(query_grid.query_offset + i * query_grid.width + j) * d..][..d];
                for row in rows.clone() {
                    for column in columns.clone() {
                        let token = grid.offset + row * grid.width + column;
                        out.iter_mut()
                            .zip(&xp[token * d..][..d])
                            .for_each(|(o, v)| *o += v);
                    }
                }
                let inverse = 1.0 / (rows.len() * columns.len()) as f32;
                out.iter_mut().for_each(|o| *o *= inverse);
            }
        }
    }
}

/// Step 5: `S = A B^T` for `A` (`m x c`, the scaled queries, or the folded ones with
/// `c = d`) and `B` (`n x c`, the keys, or `Xp`), one product per block of queries that share
/// a key range.
fn scores_in_scope(
    query: &[f32],
    key: &[f32],
    queries: &Queries,
    scope: Scope,
    n: usize,
    c: usize,
    scores: &mut [f32],
) {
    let m = queries.count;
    match scope {
        Scope::Image => multiply(
            View::row_major(query, m, c),
            View::row_major(key, n, c).transposed(),
            scores,
        ),
        Scope::Grid => {
            let mut block = Vec::new();
            for query_grid in &queries.grids {
                let (first, count) = (query_grid.query_offset, query_grid.len());
                let keys = query_grid.grid.offset..query_grid.grid.end();
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

/// Step 6 in place: the stable softmax of each row over its key range, zeros elsewhere.
fn softmax_rows(scores: &mut [f32], queries: &Queries, scope: Scope, n: usize) {
    for (query, row) in scores.chunks_exact_mut(n).enumerate() {
        let range = queries.key_range(query, scope, n);
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

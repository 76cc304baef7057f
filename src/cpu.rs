//! The fast CPU path: the forward pass of SPEC section 4 in f32 on all cores, its matrix
//! products through `matrixmultiply`'s cache-blocked, multi-threaded sgemm, the scores in the
//! cheaper association for the shape. The float64
//! reference (`reference.rs`) stays the yardstick it is tested against.

use crate::compress::{Association, KernelVariant};
use crate::kernels::position::{pooled_query_term, project_table, resized_rows, PerLayout};
use crate::layout::{Layout, Queries, QueryGrid, Scope};
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

/// The position table projected once, as on the GPU: `T w_k` and `T w_q`
/// (`gh x gw x d_c`, f32), so that the forward pass never forms `Xp = X + E` (resizing and
/// pooling commute with the projections; see docs/ARCHITECTURE.md).
#[derive(Debug)]
pub struct ProjectedTable {
    keys: Vec<f32>,
    queries: Vec<f32>,
    height: usize,
    width: usize,
    /// `pool(resize(T w_q))` (`m x d_c`) and `resize(T w_k)` (`n x d_c`) for recent layouts.
    terms: PerLayout<(Vec<f32>, Vec<f32>)>,
}

impl ProjectedTable {
    /// The projections of `weights`' table, if it has one.
    pub fn of(weights: &PMeta) -> Option<Self> {
        let (d, c) = (weights.width(), weights.channels());
        weights.position().map(|table| ProjectedTable {
            keys: project_table(&table.values, d, weights.w_k(), c),
            queries: project_table(&table.values, d, weights.w_q(), c),
            height: table.height,
            width: table.width,
            terms: PerLayout::default(),
        })
    }
}

/// `Y` (`b x m x d`) and, when asked, `P` (`b x m x n`), in f32, the scores in `association`.
#[allow(clippy::too_many_arguments)]
pub fn forward(
    features: &Features,
    weights: &PMeta,
    table: Option<&ProjectedTable>,
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
    // What the position table adds, the same for every image: pool(E) w_q (m x d_c) and
    // E w_k (n x d_c).
    let table_terms = table.map(|t| {
        t.terms.get(layout, queries, || {
            (
                pooled_query_term(layout, queries, &t.queries, t.height, t.width, c),
                resized_rows(layout, &t.keys, t.height, t.width, c),
            )
        })
    });
    // Buffers reused across images of the batch.
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
    let mut table_scores = Vec::new();
    for image in 0..features.batch() {
        let x = features.image(image);
        // Steps 1, 3 and 4: Q = pool(X) w_q + pool(E) w_q (K below when the association
        // needs it).
        pool(x, d, queries, &mut pooled);
        multiply(
            View::row_major(&pooled, m, d),
            View::row_major(weights.w_q(), d, c),
            &mut query,
        );
        if let Some(terms) = &table_terms {
            let query_term = &terms.0;
            query.iter_mut().zip(query_term).for_each(|(q, t)| *q += t);
        }
        // Step 5: fold omega / sqrt(d_c) into Q, then S over each query's key range.
        let scale = 1.0 / (c as f32).sqrt();
        for row in query.chunks_exact_mut(c) {
            row.iter_mut()
                .zip(weights.omega())
                .for_each(|(q, w)| *q *= w * scale);
        }
        if association == Association::Keys {
            // K = X w_k + E w_k, then S = Q' K^T.
            multiply(
                View::row_major(x, n, d),
                View::row_major(weights.w_k(), d, c),
                &mut key,
            );
            if let Some(terms) = &table_terms {
                let key_term = &terms.1;
                key.iter_mut().zip(key_term).for_each(|(k, t)| *k += t);
            }
            scores_in_scope(&query, &key, queries, scope, n, c, &mut scores);
        } else {
            // Q'' = Q' w_k^T, then S = Q'' X^T + Q' (E w_k)^T.
            multiply(
                View::row_major(&query, m, c),
                View::row_major(weights.w_k(), d, c).transposed(),
                &mut folded,
            );
            scores_in_scope(&folded, x, queries, scope, n, d, &mut scores);
            if let Some(terms) = &table_terms {
                let key_term = &terms.1;
                table_scores.resize(m * n, 0.0);
                scores_in_scope(&query, key_term, queries, scope, n, c, &mut table_scores);
                scores
                    .iter_mut()
                    .zip(&table_scores)
                    .for_each(|(s, t)| *s += t);
            }
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

/// Step 3: adaptive average pooling into `pooled` (`m x d`).
pub(crate) fn pool(xp: &[f32], d: usize, queries: &Queries, pooled: &mut [f32]) {
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

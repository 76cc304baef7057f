//! Encoding one chunk: the kernels of the forward pass in spec order, for a chunk of whole
//! images or for one image cut into token ranges.

use super::record::{range_of, GroupBuffers};
use super::{product_step, GpuEngine};
use crate::gpu::kernels::matmul::{MatmulVariant, Product};
use crate::gpu::kernels::position::Sample;
use crate::gpu::kernels::{ForwardShape, Passes, Slice};
use crate::gpu::plan::{pieces, Group, GroupPlan, Products, ScoresPath, Split};
use crate::gpu::resident::GpuTokens;
use crate::options::Options;
use crate::profile::Step;

impl GpuEngine {
    /// Records the ingest copy of `elements` elements of `gpu`'s group, from element
    /// `first`, into `into`.
    pub(super) fn encode_ingest(
        &self,
        passes: &mut Passes,
        gpu: &GpuTokens,
        first: usize,
        elements: usize,
        into: Slice,
    ) {
        let size = gpu.dtype.size() as u64;
        let first_byte = gpu.offset + first as u64 * size;
        let align = (self.context.limits.min_storage_buffer_offset_alignment as u64).max(4);
        let window_start = first_byte - first_byte % align;
        let window_end = (first_byte + elements as u64 * size)
            .next_multiple_of(4)
            .min(gpu.buffer.size());
        let step = Step {
            name: "ingest",
            flops: 0.0,
            bytes: elements as f64 * (size as usize + self.precision.size()) as f64,
        };
        self.kernels.ingest.encode(
            passes,
            step,
            Slice {
                buffer: gpu.buffer,
                offset: window_start,
                size: Some(window_end - window_start),
            },
            gpu.dtype,
            ((first_byte - window_start) / size) as u32,
            elements as u32,
            into,
        );
    }

    /// Records the forward pass of one chunk of `count` images whose tokens are `input`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn encode_chunk(
        &self,
        passes: &mut Passes,
        group: &Group,
        plan: &GroupPlan,
        count: usize,
        input: Slice,
        buffers: &GroupBuffers,
        options: &Options,
    ) {
        let matmul: MatmulVariant = MatmulVariant::from(options.kernels);
        let (n, m, d) = (plan.tokens, plan.queries, plan.width);
        let shape = ForwardShape {
            batch: count as u32,
            tokens: n as u32,
            queries: m as u32,
            width: d as u32,
            channels: self.weights.channels as u32,
            grid_count: group.layout.grids().len() as u32,
        };
        let has_table = self.weights.table.is_some();
        let products = Products::new(&shape, plan.association, has_table, &plan.splitting);
        let k = &self.kernels;
        let w = &self.weights;
        let (b, n_f, m_f, d_f) = (count as f64, n as f64, m as f64, d as f64);
        let e = self.precision.size();
        // Steps 1 and 3: Q_in = pool(X); the table's part joins the queries and keys below.
        let step = Step {
            name: "pooling",
            flops: b * (n_f + m_f) * d_f,
            bytes: b * (n_f + m_f) * d_f * e as f64,
        };
        k.pooling.encode(
            passes,
            step,
            &shape,
            input,
            0..n as u32,
            false,
            Slice::whole(&buffers.query_grids),
            Slice::whole(&buffers.pooled),
        );
        // Step 4: Q' = pool(E) w_q' + Q_in w_q' (omega and 1 / sqrt(d_c) folded in).
        self.encode_queries(passes, buffers, &products.queries, matmul);
        // Steps 4 and 5 in the chosen association.
        let scores = Slice::whole(&buffers.scores);
        let before_scores = Slice::whole(&buffers.before_scores);
        let (scores_lhs, scores_rhs) = match &products.path {
            // K = resize(T w_k) + X w_k, then S = Q' K^T.
            ScoresPath::Keys(keys) => {
                self.encode_resized_keys(passes, buffers, count, 0..n, before_scores);
                k.keys.encode(
                    passes,
                    product_step("keys", keys, (e, e, e)),
                    matmul,
                    keys,
                    input,
                    Slice::whole(&w.w_k),
                    before_scores,
                );
                (Slice::whole(&buffers.query), before_scores)
            }
            // Q'' = Q' w_k^T, then S = Q'' X^T (the table's part below).
            ScoresPath::Folded(folded) => {
                if let Some(position_keys) = &buffers.position_keys {
                    let into = Slice::whole(position_keys);
                    self.encode_resized_keys(passes, buffers, 1, 0..n, into);
                }
                k.scores.encode(
                    passes,
                    product_step("fold_w_k", folded, (4, e, 4)),
                    matmul,
                    folded,
                    Slice::whole(&buffers.query),
                    Slice::whole(&w.w_k),
                    before_scores,
                );
                (before_scores, input)
            }
        };
        k.scores.encode(
            passes,
            product_step("scores", &products.scores, (4, e, 4)),
            matmul,
            &products.scores,
            scores_lhs,
            scores_rhs,
            scores,
        );
        // The folded scores see X, not Xp: add Q' (E w_k)^T = Q' resize(T w_k)^T.
        if let (Some(position_keys), Some(table_part)) =
            (&buffers.position_keys, &products.table_scores)
        {
            k.scores.encode(
                passes,
                product_step("scores", table_part, (4, e, 4)),
                matmul,
                table_part,
                Slice::whole(&buffers.query),
                Slice::whole(position_keys),
                scores,
            );
        }
        // Step 6: P = softmax(S) in place, zeros outside each query's key range.
        let step = Step {
            name: "softmax",
            // The largest, the exponent of the difference, the sum, the division.
            flops: 4.0 * b * m_f * n_f,
            bytes: 2.0 * b * m_f * n_f * 4.0,
        };
        k.softmax.encode(
            passes,
            step,
            &shape,
            Slice::whole(&buffers.key_ranges),
            scores,
        );
        // Step 7: Y = P X.
        k.reduction.encode(
            passes,
            product_step("reduction", &products.reduction, (4, e, e)),
            matmul,
            &products.reduction,
            scores,
            input,
            Slice::whole(&buffers.tokens),
        );
    }
    /// Records `into = resize(T w_k)` (`E w_k`) for the tokens `tokens` of `images` images,
    /// when the weights have a position table (else nothing).
    fn encode_resized_keys(
        &self,
        passes: &mut Passes,
        buffers: &GroupBuffers,
        images: usize,
        tokens: std::ops::Range<usize>,
        into: Slice,
    ) {
        let (Some(table), Some(table_keys), Some(samples)) = (
            &self.weights.table,
            &self.weights.table_keys,
            &buffers.samples,
        ) else {
            return;
        };
        let c = self.weights.channels;
        let (count, cells) = (tokens.len(), table.height * table.width);
        let step = Step {
            name: "position",
            // Four bilinear corners, a multiply and an add each.
            flops: 8.0 * (images * count * c) as f64,
            bytes: ((images * count + cells) * c * self.precision.size()) as f64,
        };
        let shape = ForwardShape {
            batch: images as u32,
            tokens: count as u32,
            queries: 0,
            width: c as u32,
            channels: c as u32,
            grid_count: 0,
        };
        let sample = std::mem::size_of::<Sample>();
        self.kernels.position.encode(
            passes,
            step,
            &shape,
            None,
            Slice::whole(table_keys),
            range_of(samples, tokens.start * sample, count * sample),
            into,
        );
    }

    /// Records `Q' = pool(E) w_q' + Q_in w_q'` for the images of `queries`: the table's term
    /// (the same for every image) copied in, then the product (which accumulates when there
    /// is a table) added to it.
    fn encode_queries(
        &self,
        passes: &mut Passes,
        buffers: &GroupBuffers,
        queries: &Product,
        matmul: MatmulVariant,
    ) {
        if let Some(term) = &buffers.position_queries {
            let bytes = (queries.batch * queries.rows * queries.columns * 4) as u64;
            passes
                .encoder
                .copy_buffer_to_buffer(term, 0, &buffers.query, 0, Some(bytes));
        }
        let e = self.precision.size();
        self.kernels.queries.encode(
            passes,
            product_step("queries", queries, (e, 4, 4)),
            matmul,
            queries,
            Slice::whole(&buffers.pooled),
            Slice::whole(&self.weights.w_q_scaled),
            Slice::whole(&buffers.query),
        );
    }

    /// Records the forward pass of one image too large for one binding (`input` holds all
    /// of it, from its offset): token range by token range for position, pooling (summed
    /// into `Q_in`) and keys; then query block by query block for the scores and the
    /// softmax, and `Y` summed over the token ranges (`Y += P[:, range] X[range]`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn encode_split(
        &self,
        passes: &mut Passes,
        group: &Group,
        plan: &GroupPlan,
        split: &Split,
        input: Slice,
        buffers: &GroupBuffers,
        options: &Options,
    ) {
        let matmul: MatmulVariant = MatmulVariant::from(options.kernels);
        let (n, m, d) = (plan.tokens, plan.queries, plan.width);
        let c = self.weights.channels;
        let e = self.precision.size();
        let k = &self.kernels;
        let w = &self.weights;
        let shape = |tokens: usize, queries: usize| ForwardShape {
            batch: 1,
            tokens: tokens as u32,
            queries: queries as u32,
            width: d as u32,
            channels: c as u32,
            grid_count: group.layout.grids().len() as u32,
        };
        let of_input = |first: usize, count: usize| Slice {
            buffer: input.buffer,
            offset: input.offset + (first * d * e) as u64,
            size: Some((count * d * e) as u64),
        };
        let product = |rows: usize, columns: usize, inner: usize| {
            Product::new(1, rows as u32, columns as u32, inner as u32)
        };
        // Token ranges: Q_in = pool(X) (summed) and K = resize(T w_k) + X w_k.
        for (index, (first, tokens)) in pieces(n, split.tokens).enumerate() {
            let x = of_input(first, tokens);
            let (t, d_f, e_f) = (tokens as f64, d as f64, e as f64);
            let step = Step {
                name: "pooling",
                flops: t * d_f,
                bytes: (t + m as f64) * d_f * e_f,
            };
            k.pooling.encode(
                passes,
                step,
                &shape(n, m),
                x,
                first as u32..(first + tokens) as u32,
                index > 0,
                Slice::whole(&buffers.query_grids),
                Slice::whole(&buffers.pooled),
            );
            let keys_range = range_of(&buffers.before_scores, first * c * e, tokens * c * e);
            self.encode_resized_keys(passes, buffers, 1, first..first + tokens, keys_range);
            let keys = Product {
                rhs_per_image: false,
                accumulate: w.table.is_some(),
                ..product(tokens, c, d)
            };
            k.keys.encode(
                passes,
                product_step("keys", &keys, (e, e, e)),
                matmul,
                &keys,
                x,
                Slice::whole(&w.w_k),
                keys_range,
            );
        }
        // Q' = pool(E) w_q' + Q_in w_q' (whole).
        let queries = Product {
            rhs_per_image: false,
            accumulate: w.table.is_some(),
            ..product(m, c, d)
        };
        self.encode_queries(passes, buffers, &queries, matmul);
        // Query blocks: S = Q' K^T, P = softmax(S), Y = sum over ranges of P[:, r] X[r].
        for (first_query, count) in pieces(m, split.queries) {
            let scores = range_of(&buffers.scores, first_query * n * 4, count * n * 4);
            let product_scores = Product {
                rhs_transposed: true,
                ..product(count, n, c)
            };
            k.scores.encode(
                passes,
                product_step("scores", &product_scores, (4, e, 4)),
                matmul,
                &product_scores,
                range_of(&buffers.query, first_query * c * 4, count * c * 4),
                Slice::whole(&buffers.before_scores),
                scores,
            );
            let step = Step {
                name: "softmax",
                flops: 4.0 * count as f64 * n as f64,
                bytes: 2.0 * count as f64 * n as f64 * 4.0,
            };
            k.softmax.encode(
                passes,
                step,
                &shape(n, count),
                range_of(&buffers.key_ranges, first_query * 16, count * 16),
                scores,
            );
            let tokens_out = range_of(&buffers.tokens, first_query * d * e, count * d * e);
            for (index, (first, tokens)) in pieces(n, split.tokens).enumerate() {
                let reduction = Product {
                    lhs_row_stride: Some(n as u32),
                    accumulate: index > 0,
                    ..product(count, d, tokens)
                };
                let block = range_of(
                    &buffers.scores,
                    (first_query * n + first) * 4,
                    ((count - 1) * n + tokens) * 4,
                );
                k.reduction.encode(
                    passes,
                    product_step("reduction", &reduction, (4, e, e)),
                    matmul,
                    &reduction,
                    block,
                    of_input(first, tokens),
                    tokens_out,
                );
            }
        }
    }
}

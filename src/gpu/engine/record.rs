//! Recording a call: every group and chunk into one command encoder, the buffers each group's
//! chunks share, the call's outputs, then one submission.

use super::readback::Submitted;
use super::GpuEngine;
use crate::error::Result;
use crate::gpu::buffers::{copy_to_staging, padded_size, storage_output, storage_with};
use crate::gpu::kernels::position::samples;
use crate::gpu::kernels::{Passes, Slice};
use crate::gpu::memory::Tracked;
use crate::gpu::plan::{pieces, Group, GroupPlan, InputPath};
use crate::gpu::resident::Tokens;
use crate::gpu::scope::scoped;
use crate::options::{Association, Options};

impl GpuEngine {
    /// Records every group and chunk of a call into one encoder and submits it.
    pub(super) fn submit(
        &self,
        groups: &[Group],
        options: &Options,
        readback: bool,
    ) -> Result<Submitted> {
        self.context.check_alive()?;
        let plan = self.plan(groups, options, readback)?;
        let device = &self.context.device;
        let ledger = &self.ledger;
        let e = self.precision.size();
        let poison = options.poison;
        let result = scoped(device, "the forward pass", || {
            let mut passes = Passes::new(device, &self.context.queue, ledger, options.profile);
            if plan.split_scratch > 0 {
                passes.set_split_scratch(storage_output(
                    ledger,
                    device,
                    "split-K partial products",
                    plan.split_scratch,
                    wgpu::BufferUsages::empty(),
                    poison,
                ));
            }
            let mut keep = Vec::new();
            let out_usage = wgpu::BufferUsages::COPY_DST;
            let (mut tokens, mut projection) = if plan.single {
                (None, None)
            } else {
                (
                    Some(storage_output(
                        ledger,
                        device,
                        "reduced tokens",
                        padded_size(plan.tokens_len, e),
                        out_usage,
                        poison,
                    )),
                    options.save_projection.then(|| {
                        storage_output(
                            ledger,
                            device,
                            "projection",
                            padded_size(plan.projection_len, 4),
                            out_usage,
                            poison,
                        )
                    }),
                )
            };
            for (group, group_plan) in groups.iter().zip(&plan.groups) {
                let buffers = self.group_buffers(group, group_plan, options);
                for (start, count) in group_plan.chunks() {
                    let mut uploaded = None;
                    let input = match (&group.source, group_plan.input) {
                        (Tokens::Host(host), _) => {
                            let size = group_plan.tokens * group_plan.width;
                            let bytes = host.values().encoded(
                                start * size..(start + count) * size,
                                self.precision.elem().dtype(),
                            );
                            Slice::whole(
                                uploaded.insert(storage_with(ledger, device, "features", &bytes)),
                            )
                        }
                        (Tokens::Gpu(gpu), InputPath::Direct) => {
                            let image = (group_plan.tokens * group_plan.width * e) as u64;
                            Slice {
                                buffer: gpu.buffer,
                                offset: gpu.offset + start as u64 * image,
                                size: Some(count as u64 * image),
                            }
                        }
                        (Tokens::Gpu(gpu), _) => {
                            let ingested = buffers.ingested.as_ref().expect("ingest buffer");
                            let image = group_plan.tokens * group_plan.width;
                            match &group_plan.split {
                                None => self.encode_ingest(
                                    &mut passes,
                                    gpu,
                                    start * image,
                                    count * image,
                                    Slice::whole(ingested),
                                ),
                                // Range by range, so that each source window fits a binding.
                                Some(split) => {
                                    let d = group_plan.width;
                                    for (first, tokens) in pieces(group_plan.tokens, split.tokens) {
                                        self.encode_ingest(
                                            &mut passes,
                                            gpu,
                                            start * image + first * d,
                                            tokens * d,
                                            range_of(ingested, first * d * e, tokens * d * e),
                                        );
                                    }
                                }
                            }
                            Slice::whole(ingested)
                        }
                    };
                    match &group_plan.split {
                        None => self.encode_chunk(
                            &mut passes,
                            group,
                            group_plan,
                            count,
                            input,
                            &buffers,
                            options,
                        ),
                        Some(split) => self.encode_split(
                            &mut passes,
                            group,
                            group_plan,
                            split,
                            input,
                            &buffers,
                            options,
                        ),
                    }
                    if let Some(tokens) = &tokens {
                        let per_image = group_plan.queries * group_plan.width;
                        passes.encoder.copy_buffer_to_buffer(
                            &buffers.tokens,
                            0,
                            tokens,
                            ((group_plan.tokens_at + start * per_image) * e) as u64,
                            Some(((count * per_image * e) as u64).next_multiple_of(4)),
                        );
                    }
                    if let Some(projection) = &projection {
                        let per_image = group_plan.queries * group_plan.tokens;
                        passes.encoder.copy_buffer_to_buffer(
                            &buffers.scores,
                            0,
                            projection,
                            ((group_plan.projection_at + start * per_image) * 4) as u64,
                            Some((count * per_image * 4) as u64),
                        );
                    }
                    // An upload is kept until the call is over.
                    keep.extend(uploaded);
                }
                let (chunk_tokens, chunk_scores, rest) = buffers.split();
                keep.extend(rest);
                if plan.single {
                    // The chunk's outputs are the call's.
                    tokens = Some(chunk_tokens);
                    if options.save_projection {
                        projection = Some(chunk_scores);
                    } else {
                        // Kept until the call is over, not pooled while it is recorded.
                        keep.push(chunk_scores);
                    }
                } else {
                    keep.extend([chunk_tokens, chunk_scores]);
                }
            }
            let tokens = tokens.expect("a call has at least one group");
            let (mut encoder, timings, parameters) = passes.finish();
            keep.extend(parameters);
            let staging = readback.then(|| {
                let tokens_staging = copy_to_staging(ledger, device, &mut encoder, &tokens);
                let projection_staging = projection
                    .as_ref()
                    .map(|projection| copy_to_staging(ledger, device, &mut encoder, projection));
                (tokens_staging, projection_staging)
            });
            let index = self.context.queue.submit([encoder.finish()]);
            (tokens, projection, staging, timings, keep, index)
        })?;
        let (tokens, projection, staging, timings, keep, index) = result;
        Ok(Submitted {
            tokens,
            projection,
            staging,
            timings,
            _in_use: keep,
            index,
            plan,
        })
    }

    /// The buffers one group's chunks share.
    fn group_buffers(&self, group: &Group, plan: &GroupPlan, options: &Options) -> GroupBuffers {
        let poison = options.poison;
        let device = &self.context.device;
        let ledger = &self.ledger;
        let (k, n, m, d, c) = (
            plan.chunk,
            plan.tokens,
            plan.queries,
            plan.width,
            self.weights.channels,
        );
        let e = self.precision.size();
        let output = |label: &str, count: usize, size: usize| {
            storage_output(
                ledger,
                device,
                label,
                padded_size(count, size),
                wgpu::BufferUsages::COPY_DST,
                poison,
            )
        };
        let queries = group.queries;
        let query_grids: Vec<u32> = queries
            .grids
            .iter()
            .flat_map(|q| {
                [
                    q.grid.offset as u32,
                    q.grid.height as u32,
                    q.grid.width as u32,
                    q.query_offset as u32,
                    q.height as u32,
                    q.width as u32,
                    q.grid.stride as u32,
                    0,
                ]
            })
            .collect();
        let key_ranges: Vec<u32> = (0..m)
            .flat_map(|i| {
                let keys = queries.keys(i, options.scope, n);
                [keys.start, keys.end, keys.stride, keys.width].map(|v| v as u32)
            })
            .collect();
        GroupBuffers {
            query_grids: storage_with(
                ledger,
                device,
                "query grids",
                bytemuck::cast_slice(&query_grids),
            ),
            key_ranges: storage_with(
                ledger,
                device,
                "key ranges",
                bytemuck::cast_slice(&key_ranges),
            ),
            samples: self.weights.table.as_ref().map(|table| {
                let samples = samples(group.layout, table.height, table.width);
                storage_with(
                    ledger,
                    device,
                    "position samples",
                    bytemuck::cast_slice(&samples),
                )
            }),
            ingested: (plan.input == InputPath::Ingest)
                .then(|| output("ingested features", k * n * d, e)),
            position_queries: self.weights.table.as_ref().map(|table| {
                let term = table.query_term(group.layout, group.queries);
                storage_with(
                    ledger,
                    device,
                    "position query term",
                    bytemuck::cast_slice(&term.repeat(k)),
                )
            }),
            position_keys: (self.weights.table.is_some() && plan.association != Association::Keys)
                .then(|| output("position key term", n * c, e)),
            pooled: output("pooled queries", k * m * d, e),
            query: output("queries", k * m * c, 4),
            before_scores: match plan.association {
                Association::Keys => output("keys", k * n * c, e),
                _ => output("folded queries", k * m * d, 4),
            },
            scores: output("scores", k * m * n, 4),
            tokens: output("chunk tokens", k * m * d, e),
        }
    }
}

/// The `size` bytes of `buffer` from byte `offset`, as a binding.
pub(super) fn range_of(buffer: &wgpu::Buffer, offset: usize, size: usize) -> Slice<'_> {
    Slice {
        buffer,
        offset: offset as u64,
        size: Some(size as u64),
    }
}

impl GroupBuffers {
    /// The chunk's tokens and scores (the call's outputs when there is one chunk), and every
    /// other buffer, to keep until the call is over.
    fn split(self) -> (Tracked, Tracked, Vec<Tracked>) {
        let mut rest = vec![
            self.query_grids,
            self.key_ranges,
            self.pooled,
            self.query,
            self.before_scores,
        ];
        rest.extend(self.samples);
        rest.extend(self.ingested);
        rest.extend(self.position_queries);
        rest.extend(self.position_keys);
        (self.tokens, self.scores, rest)
    }
}

/// The buffers of one group, sized for its chunk, reused by every chunk of it.
pub(super) struct GroupBuffers {
    pub(super) query_grids: Tracked,
    pub(super) key_ranges: Tracked,
    pub(super) samples: Option<Tracked>,
    /// The ingest kernel's output (tokens from the application's buffer).
    pub(super) ingested: Option<Tracked>,
    /// What the position table adds to the scaled queries, one copy per image of a chunk.
    pub(super) position_queries: Option<Tracked>,
    /// `E w_k` for the folded scores (one image).
    pub(super) position_keys: Option<Tracked>,
    pub(super) pooled: Tracked,
    pub(super) query: Tracked,
    /// `K` or `Q''`.
    pub(super) before_scores: Tracked,
    pub(super) scores: Tracked,
    pub(super) tokens: Tracked,
}

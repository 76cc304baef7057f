//! What a call will allocate and how it is cut into chunks, worked out from the shapes alone,
//! before any device work: the footprint a call reports, the checks that refuse a call that
//! cannot fit, and the chunk sizes the recording follows.

use super::buffers::padded_size;
use super::resident::{GpuTokens, Tokens};
use crate::error::{Error, Result};
use crate::gpu::kernels::matmul::{MatmulVariant, Product};
use crate::gpu::kernels::position::Sample;
use crate::gpu::kernels::{ForwardShape, MAX_GROUPS_PER_DIMENSION};
use crate::layout::{Layout, Queries};
use crate::options::SplitK;
use crate::options::{Association, KernelVariant, Precision};

/// Images that share one layout: the unit the kernels run on.
#[derive(Clone, Copy, Debug)]
pub struct Group<'a> {
    /// Their tokens.
    pub source: Tokens<'a>,
    /// Their layout.
    pub layout: &'a Layout,
    /// The query grids of the layout at the call's keep fraction.
    pub queries: &'a Queries,
}

/// How a chunk's tokens reach the kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputPath {
    /// Uploaded from the host into a buffer of its own.
    Upload,
    /// The application's buffer bound directly (same element type, aligned offsets).
    Direct,
    /// Copied on the device from the application's buffer by the ingest kernel (another
    /// dtype, or an offset the device cannot bind).
    Ingest,
}

/// The plan of one group.
#[derive(Clone, Debug)]
pub struct GroupPlan {
    /// Images `b`, tokens `n`, queries `m`.
    pub batch: usize,
    /// Tokens per image.
    pub tokens: usize,
    /// Queries per image.
    pub queries: usize,
    /// Token width `d`.
    pub width: usize,
    /// Images per chunk (the last chunk may hold fewer).
    pub chunk: usize,
    /// The scores association.
    pub association: Association,
    /// How tokens reach the kernels.
    pub input: InputPath,
    /// Element offset of the group's reduced tokens in the call's token output.
    pub tokens_at: usize,
    /// Element offset of the group's `P` in the call's projection output.
    pub projection_at: usize,
    /// How each image is cut into token ranges and query blocks, when one image does not
    /// fit one storage binding (then chunks hold one image).
    pub split: Option<Split>,
    /// How the chunks' products are cut along their inner dimension (never for an image
    /// cut into token ranges).
    pub splitting: Splitting,
}

/// An image too large for one storage binding, cut so that every bound range fits: token
/// ranges for the features, the keys and the columns of `P`; query blocks for the
/// scores, `P` and `Y`. Both sizes are multiples of the binding-offset alignment (in
/// elements), so every range starts at a bindable offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Split {
    /// Tokens per range (the last may hold fewer).
    pub tokens: usize,
    /// Queries per block (the last may hold fewer).
    pub queries: usize,
}

/// `(start, count)` of each piece of `total` in pieces of `size`.
pub fn pieces(total: usize, size: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..total)
        .step_by(size.max(1))
        .map(move |start| (start, size.min(total - start)))
}

impl GroupPlan {
    /// The first image and image count of each chunk.
    pub fn chunks(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        (0..self.batch)
            .step_by(self.chunk)
            .map(|start| (start, self.chunk.min(self.batch - start)))
    }
}

/// The plan of one call.
#[derive(Clone, Debug)]
pub struct CallPlan {
    /// One per group, in order.
    pub groups: Vec<GroupPlan>,
    /// Elements of the token output (every group, 4-byte aligned starts).
    pub tokens_len: usize,
    /// Elements of the projection output (0 when `P` is not asked for).
    pub projection_len: usize,
    /// One group in one chunk: the kernels write the outputs directly, no copies.
    pub single: bool,
    /// Bytes of every buffer the call creates (parameters aside: 32 bytes a pass).
    pub bytes: u64,
    /// Bytes of the scratch split-K products write their partial products into (0: no
    /// product splits), counted in `bytes`; one for the call, sized for its largest product.
    pub split_scratch: u64,
}

/// What the planner needs to know about the compressor and the device.
#[derive(Clone, Copy, Debug)]
pub struct Device {
    /// Most bytes one storage binding may span.
    pub binding_limit: u64,
    /// Most bytes one buffer may hold.
    pub buffer_limit: u64,
    /// Alignment of a storage binding's offset.
    pub offset_alignment: u64,
    /// The storage precision.
    pub precision: Precision,
    /// Projection width `d_c`.
    pub channels: usize,
    /// Whether the weights have a position table (then its terms have buffers of their own).
    pub table: bool,
    /// Most bytes a call may allocate, if the application set a budget.
    pub budget: Option<u64>,
}

/// Per-call choices the plan depends on.
#[derive(Clone, Copy, Debug)]
pub struct Wants {
    /// `P` handed back.
    pub projection: bool,
    /// Outputs read back to the host (staging buffers).
    pub readback: bool,
    /// The kernels.
    pub kernels: KernelVariant,
    /// The association asked for.
    pub association: Association,
    /// A binding limit lower than the device's, to force chunks (tests).
    pub binding_limit: Option<u64>,
    /// Split-K, `Auto` resolved for the adapter.
    pub split: SplitK,
}

/// Checks a GPU source against its buffer before anything is recorded.
fn check_gpu_source(tokens: &GpuTokens, width: usize) -> Result<()> {
    if !tokens.buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
        return Err(Error::InvalidArgument(format!(
            "the features buffer has usages {:?}; expected STORAGE among them",
            tokens.buffer.usage()
        )));
    }
    let size = tokens.dtype.size() as u64;
    if !tokens.offset.is_multiple_of(size) {
        return Err(Error::InvalidArgument(format!(
            "features offset {} bytes is not a multiple of the {} element size ({size})",
            tokens.offset,
            tokens.dtype.name()
        )));
    }
    let needed = (tokens.batch * tokens.tokens * width) as u64 * size;
    if tokens.offset + needed > tokens.buffer.size() {
        return Err(Error::InvalidArgument(format!(
            "features of {} x {} x {width} {} need {needed} bytes from offset {}; the buffer \
             holds {} bytes",
            tokens.batch,
            tokens.tokens,
            tokens.dtype.name(),
            tokens.offset,
            tokens.buffer.size()
        )));
    }
    Ok(())
}

/// Plans a call over `groups`: chunk sizes, input paths, output offsets and the bytes it
/// will allocate. Fails, before any device work, when an image cannot fit one binding, when a
/// buffer would pass the device's size limit or when the call passes the budget.
pub fn plan(groups: &[Group], device: &Device, wants: &Wants) -> Result<CallPlan> {
    let e = device.precision.size();
    let elem_dtype = device.precision.elem().dtype();
    let c = device.channels;
    let limit = wants
        .binding_limit
        .map_or(device.binding_limit, |l| l.min(device.binding_limit));
    let align = device.offset_alignment.max(4);
    let mut plans = Vec::with_capacity(groups.len());
    let mut bytes = 0u64;
    let mut split_scratch = 0u64;
    let (mut tokens_len, mut projection_len) = (0usize, 0usize);
    let single_group = groups.len() == 1;
    for group in groups {
        let (batch, n, d) = group.source.shape();
        let m = group.queries.count;
        if let Tokens::Gpu(tokens) = &group.source {
            check_gpu_source(tokens, d)?;
        }
        if [batch * n * d, batch * m * n, batch * m * d.max(c)]
            .iter()
            .any(|&count| count > u32::MAX as usize)
        {
            return Err(Error::TooLarge(format!(
                "a group of {batch} images of {n} x {d} passes the kernels' 32-bit indices; \
                 split it into smaller calls"
            )));
        }
        if n.max(d).max(m).max(c) > 8 * MAX_GROUPS_PER_DIMENSION as usize {
            return Err(Error::TooLarge(format!(
                "{n} tokens of width {d} pass the kernels' dispatch limit of {} rows or \
                 columns",
                8 * MAX_GROUPS_PER_DIMENSION
            )));
        }
        let association = wants.association.resolve(wants.kernels, n, m, d, c);
        // Bytes per image of every buffer bound as one storage binding.
        let per_image = [
            ("the features", (n * d * e) as u64),
            ("the pooled queries", (m * d * e) as u64),
            ("the queries", (m * c * 4) as u64),
            (
                match association {
                    Association::Keys => "the keys",
                    _ => "the folded queries",
                },
                match association {
                    Association::Keys => (n * c * e) as u64,
                    _ => (m * d * 4) as u64,
                },
            ),
            ("the scores", (m * n * 4) as u64),
            ("the reduced tokens", (m * d * e) as u64),
        ];
        let mut chunk = (batch as u64).min(MAX_GROUPS_PER_DIMENSION as u64);
        let source_size = match &group.source {
            Tokens::Gpu(tokens) => tokens.dtype.size(),
            Tokens::Host(_) => e,
        };
        // The ingest copy binds a window of the source up to `align + 4` bytes wider.
        let source_window = match &group.source {
            Tokens::Gpu(_) => (n * d * source_size) as u64 + align + 4,
            Tokens::Host(_) => 0,
        };
        let too_large = per_image.iter().any(|(_, size)| *size > limit) || source_window > limit;
        let (association, split) = match too_large {
            false => {
                for (_, size) in &per_image {
                    chunk = chunk.min(limit / (*size).max(1));
                }
                (association, None)
            }
            true => {
                chunk = 1;
                let split = split_image(n, m, d, c, e, source_size, limit, align)?;
                for (name, size) in [
                    ("the features", (n * d * e) as u64),
                    ("the scores", (m * n * 4) as u64),
                ] {
                    if size > device.buffer_limit {
                        return Err(Error::TooLarge(format!(
                            "one image of {n} tokens x {d} needs a {size}-byte buffer for \
                             {name}; the device allows {} per buffer",
                            device.buffer_limit
                        )));
                    }
                }
                // The folded association binds all of X at once: keys it is.
                (Association::Keys, Some(split))
            }
        };
        // Chunk outputs are copied into the call's output at 4-byte aligned offsets: with
        // f16 tokens and an odd m x d, chunks hold an even number of images.
        let even = |chunk: usize| -> Result<usize> {
            if chunk >= batch || (m * d * e).is_multiple_of(4) {
                Ok(chunk)
            } else if chunk < 2 {
                Err(Error::TooLarge(format!(
                    "{m} x {d} f16 reduced tokens per image leave chunk copies unaligned and \
                     one binding holds a single image; use f32 or smaller calls"
                )))
            } else {
                Ok(chunk & !1)
            }
        };
        let mut chunk = even(chunk.max(1) as usize)?;
        let input = match &group.source {
            Tokens::Host(_) => InputPath::Upload,
            Tokens::Gpu(tokens) => {
                let image = (n * d * e) as u64;
                let aligned_chunks = chunk >= batch || (chunk as u64 * image).is_multiple_of(align);
                if tokens.dtype == elem_dtype
                    && tokens.offset.is_multiple_of(align)
                    && image.is_multiple_of(4)
                    && aligned_chunks
                {
                    InputPath::Direct
                } else {
                    // The ingest kernel's window of the source may start up to `align` bytes
                    // before the chunk and end up to 3 bytes after it (an image fits, or the
                    // image is split and copied range by range).
                    if split.is_none() {
                        let source_image = (n * d * tokens.dtype.size()) as u64;
                        let room = limit.saturating_sub(align + 4);
                        chunk = even(chunk.min((room / source_image) as usize))?;
                    }
                    InputPath::Ingest
                }
            }
        };
        // Element offsets in the outputs: each group starts 4-byte aligned.
        let tokens_at = tokens_len.next_multiple_of(4 / e);
        tokens_len = tokens_at + batch * m * d;
        let projection_at = projection_len;
        if wants.projection {
            projection_len += batch * m * n;
        }
        // What the group allocates.
        let k = chunk;
        let padded = |count: usize, size: usize| padded_size(count, size);
        bytes += match input {
            InputPath::Upload => (0..batch)
                .step_by(k)
                .map(|start| padded(k.min(batch - start) * n * d, e))
                .sum(),
            InputPath::Ingest => padded(k * n * d, e),
            InputPath::Direct => 0,
        };
        if device.table {
            // Samples, the query term per image, and `E w_k` for the folded scores.
            bytes += padded(n * std::mem::size_of::<Sample>(), 1) + padded(k * m * c, 4);
            if association != Association::Keys {
                bytes += padded(n * c, e);
            }
        }
        bytes += padded(group.layout.grids().len() * 8, 4) + padded(m * 4, 4);
        bytes += padded(k * m * d, e) + padded(k * m * c, 4) + padded(k * m * n, 4);
        bytes += match association {
            Association::Keys => padded(k * n * c, e),
            _ => padded(k * m * d, 4),
        };
        bytes += padded(k * m * d, e);
        let splitting = Splitting {
            policy: match split {
                Some(_) => SplitK::Off,
                None => wants.split,
            },
            variant: MatmulVariant::from(wants.kernels),
            precision: device.precision,
            scratch_limit: limit,
        };
        // The last chunk may hold fewer images, hence fewer workgroups and more pieces.
        for images in [k, batch % k] {
            if images > 0 {
                let shape = ForwardShape {
                    batch: images as u32,
                    tokens: n as u32,
                    queries: m as u32,
                    width: d as u32,
                    channels: c as u32,
                    grid_count: group.layout.grids().len() as u32,
                };
                let products = Products::new(&shape, association, device.table, &splitting);
                split_scratch = split_scratch.max(products.scratch_bytes());
            }
        }
        plans.push(GroupPlan {
            batch,
            tokens: n,
            queries: m,
            width: d,
            chunk,
            association,
            input,
            tokens_at,
            projection_at,
            split,
            splitting,
        });
    }
    let single = single_group && plans.first().is_some_and(|p| p.chunk >= p.batch);
    let tokens_bytes = padded_size(tokens_len, e);
    let projection_bytes = if wants.projection {
        padded_size(projection_len, 4)
    } else {
        0
    };
    if !single {
        // The call's outputs, besides the per-chunk ones.
        bytes += tokens_bytes + projection_bytes;
    }
    if wants.readback {
        bytes += tokens_bytes + projection_bytes;
    }
    bytes += split_scratch;
    for (name, size) in [("reduced tokens", tokens_bytes), ("P", projection_bytes)] {
        if size > device.buffer_limit {
            return Err(Error::TooLarge(format!(
                "the call's {name} need a {size}-byte buffer; the device allows {} per buffer \
                 (split the batch)",
                device.buffer_limit
            )));
        }
    }
    if let Some(budget) = device.budget {
        if bytes > budget {
            return Err(Error::TooLarge(format!(
                "the call needs {bytes} bytes of GPU memory; the compressor's budget is \
                 {budget} bytes"
            )));
        }
    }
    Ok(CallPlan {
        groups: plans,
        tokens_len,
        projection_len,
        single,
        bytes,
        split_scratch,
    })
}

/// How to cut one image of `n` tokens (width `d`, `m` queries, `c` channels, stored in `e`
/// bytes, read from a source of `source` bytes per element) so that every range the kernels
/// bind fits `limit`, with range starts that are multiples of `align` elements (hence of
/// `align` bytes for every buffer). What stays whole (the keys, the pooled queries and the
/// queries) must fit one binding itself.
#[allow(clippy::too_many_arguments)]
fn split_image(
    n: usize,
    m: usize,
    d: usize,
    c: usize,
    e: usize,
    source: usize,
    limit: u64,
    align: u64,
) -> Result<Split> {
    let refuse = |what: &str, bytes: u64| {
        Error::TooLarge(format!(
            "one image of {n} tokens x {d} is cut into token ranges, but {what} needs {bytes} \
             bytes in one storage binding; the device allows {limit}"
        ))
    };
    for (what, bytes) in [
        ("the keys", (n * c * e) as u64),
        ("the pooled queries", (m * d * e) as u64),
        ("the queries", (m * c * 4) as u64),
    ] {
        if bytes > limit {
            return Err(refuse(what, bytes));
        }
    }
    let align = align as usize;
    // Bytes per token of each range bound: X, the keys, the position samples, and the
    // source window of the ingest copy (which may reach `align + 4` bytes past the range).
    let per_token = (d * e)
        .max(c * e)
        .max(std::mem::size_of::<Sample>())
        .max(d * source) as u64;
    let room = limit.saturating_sub(align as u64 + 4);
    let tokens = ((room / per_token) as usize / align * align).min(n.next_multiple_of(align));
    if tokens == 0 {
        return Err(refuse(
            &format!("a range of {align} tokens"),
            align as u64 * per_token + align as u64 + 4,
        ));
    }
    // Bytes per query of each block bound: rows of S and P, of Y, of the queries, of the
    // key ranges.
    let per_query = (n * 4).max(d * e).max(c * 4).max(16) as u64;
    let queries = ((limit / per_query) as usize / align * align).min(m.next_multiple_of(align));
    if queries == 0 {
        return Err(refuse(
            &format!("a block of {align} queries"),
            align as u64 * per_query,
        ));
    }
    Ok(Split { tokens, queries })
}

/// How step 5 reaches the scores: the product that comes before `S`.
#[derive(Clone, Copy, Debug)]
pub enum ScoresPath {
    /// `K = Xp w_k` (as `X w_k + E w_k`), then `S = Q' K^T`.
    Keys(Product),
    /// `Q'' = Q' w_k^T`, then `S = Q'' Xp^T` (as `Q'' X^T + Q' (E w_k)^T`).
    Folded(Product),
}

/// How a call's products are cut along their inner dimension (split-K).
#[derive(Clone, Copy, Debug)]
pub struct Splitting {
    /// `SplitK::Auto` resolved for the adapter.
    pub policy: SplitK,
    /// The kernels the products run.
    pub variant: MatmulVariant,
    /// Products that write the storage type may split only when it is f32.
    pub precision: Precision,
    /// Most bytes of partial products (one storage binding).
    pub scratch_limit: u64,
}

/// The matrix products of one chunk, in the order they run, each with its split-K cut.
#[derive(Clone, Copy, Debug)]
pub struct Products {
    /// `Q' = Q_in w_q'` (added to the table's term when there is a table).
    pub queries: Product,
    /// The keys or the folded queries.
    pub path: ScoresPath,
    /// `S = Q' K^T` or `S = Q'' X^T`.
    pub scores: Product,
    /// `S += Q' (E w_k)^T`: the table's part of the folded scores.
    pub table_scores: Option<Product>,
    /// `Y = P X`.
    pub reduction: Product,
}

impl Products {
    /// The products of a chunk of `shape` in the (resolved) `association`, with or without
    /// a position `table`, cut as `splitting` says.
    pub fn new(
        shape: &ForwardShape,
        association: Association,
        table: bool,
        splitting: &Splitting,
    ) -> Self {
        let shared_rhs = Product {
            rhs_per_image: false,
            ..Product::new(shape.batch, shape.queries, shape.channels, shape.width)
        };
        let scores_over = |inner: u32| Product {
            columns: shape.tokens,
            inner,
            rhs_per_image: true,
            rhs_transposed: true,
            ..shared_rhs
        };
        let (path, scores) = match association {
            Association::Keys => (
                ScoresPath::Keys(Product {
                    rows: shape.tokens,
                    accumulate: table,
                    ..shared_rhs
                }),
                scores_over(shape.channels),
            ),
            // `association` is resolved: `Auto` does not come here.
            Association::Tokens | Association::Auto => (
                ScoresPath::Folded(Product {
                    columns: shape.width,
                    inner: shape.channels,
                    rhs_transposed: true,
                    ..shared_rhs
                }),
                scores_over(shape.width),
            ),
        };
        let table_scores = match path {
            ScoresPath::Folded(_) if table => Some(Product {
                rhs_per_image: false,
                accumulate: true,
                ..scores_over(shape.channels)
            }),
            _ => None,
        };
        // Products into the storage type (the keys, the reduced tokens) write f32 partial
        // products only where that type is f32.
        let f32_out = splitting.precision == Precision::F32;
        let split = |product: Product, writes_f32: bool| match writes_f32 {
            true => product.split(splitting.policy, splitting.variant, splitting.scratch_limit),
            false => product,
        };
        Products {
            queries: split(
                Product {
                    accumulate: table,
                    ..shared_rhs
                },
                true,
            ),
            path: match path {
                ScoresPath::Keys(keys) => ScoresPath::Keys(split(keys, f32_out)),
                ScoresPath::Folded(folded) => ScoresPath::Folded(split(folded, true)),
            },
            scores: split(scores, true),
            table_scores: table_scores.map(|product| split(product, true)),
            reduction: split(
                Product {
                    columns: shape.width,
                    inner: shape.tokens,
                    rhs_per_image: true,
                    ..shared_rhs
                },
                f32_out,
            ),
        }
    }

    /// Bytes of the split-K scratch the largest split product needs (0: none splits).
    pub fn scratch_bytes(&self) -> u64 {
        let path = match self.path {
            ScoresPath::Keys(product) | ScoresPath::Folded(product) => product,
        };
        [
            Some(self.queries),
            Some(path),
            Some(self.scores),
            self.table_scores,
            Some(self.reduction),
        ]
        .iter()
        .flatten()
        .map(|product| product.scratch_elements() * 4)
        .max()
        .unwrap_or(0)
    }
}

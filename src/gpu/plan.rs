//! What a call will allocate and how it is cut into chunks, worked out from the shapes alone,
//! before any device work: the footprint a call reports, the checks that refuse a call that
//! cannot fit, and the chunk sizes the recording follows.

use super::buffers::padded_size;
use super::resident::GpuTokens;
use crate::compress::Tokens;
use crate::compress::{Association, KernelVariant, Precision};
use crate::error::{Error, Result};
use crate::kernels::position::Sample;
use crate::kernels::MAX_GROUPS_PER_DIMENSION;
use crate::layout::{Layout, Queries};

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
    /// Whether the weights have a position table (then `Xp` is a buffer of its own).
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
        for (name, size) in &per_image {
            if *size > limit {
                return Err(Error::TooLarge(format!(
                    "one image of {n} tokens x {d} needs {size} bytes for {name} in one \
                     storage binding; the device allows {limit} (the kernels do not split an \
                     image)"
                )));
            }
            chunk = chunk.min(limit / (*size).max(1));
        }
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
                    // before the chunk and end up to 3 bytes after it.
                    let source_image = (n * d * tokens.dtype.size()) as u64;
                    let room = limit.saturating_sub(align + 4);
                    if source_image > room {
                        return Err(Error::TooLarge(format!(
                            "one image of {n} tokens x {d} {} needs {} bytes in one storage \
                             binding to be copied in; the device allows {limit}",
                            tokens.dtype.name(),
                            source_image + align + 4
                        )));
                    }
                    chunk = even(chunk.min((room / source_image) as usize))?;
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
            bytes += padded(k * n * d, e) + padded(n * std::mem::size_of::<Sample>(), 1);
        }
        bytes += padded(group.layout.grids().len() * 8, 4) + padded(m * 2, 4);
        bytes += padded(k * m * d, e) + padded(k * m * c, 4) + padded(k * m * n, 4);
        bytes += match association {
            Association::Keys => padded(k * n * c, e),
            _ => padded(k * m * d, 4),
        };
        bytes += padded(k * m * d, e);
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
    })
}

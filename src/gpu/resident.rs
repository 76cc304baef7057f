//! Tokens that stay on the GPU: the application's buffer of features in, a buffer of reduced
//! tokens out, nothing through the host.

use crate::layout::Queries;
use crate::tensor::{Dtype, Features, HostTokens};

/// Image tokens already in a buffer on the compressor's device: `batch x tokens x width`,
/// row-major, `dtype` elements, starting `offset` bytes into `buffer`.
///
/// The buffer needs `wgpu::BufferUsages::STORAGE`. When `dtype` is the compressor's storage
/// precision and `offset` is a multiple of the device's `min_storage_buffer_offset_alignment`
/// (256 on most devices), the kernels read the buffer in place; otherwise a copy kernel
/// converts the tokens into the compressor's own buffer first (still on the device).
/// Values are not checked for NaN or infinity (that would need a read-back).
#[derive(Clone, Copy, Debug)]
pub struct GpuTokens<'a> {
    /// The buffer holding the tokens.
    pub buffer: &'a wgpu::Buffer,
    /// Bytes before the first token (a multiple of the element size).
    pub offset: u64,
    /// Element type: f32, f16 or bf16.
    pub dtype: Dtype,
    /// Images `b`.
    pub batch: usize,
    /// Tokens per image `n`.
    pub tokens: usize,
    /// Token width `d`.
    pub width: usize,
}

impl<'a> GpuTokens<'a> {
    /// `batch` images of `tokens x width` `dtype` elements at the start of `buffer`.
    pub fn new(
        buffer: &'a wgpu::Buffer,
        dtype: Dtype,
        batch: usize,
        tokens: usize,
        width: usize,
    ) -> Self {
        GpuTokens {
            buffer,
            offset: 0,
            dtype,
            batch,
            tokens,
            width,
        }
    }

    /// The same tokens, starting `offset` bytes into the buffer.
    pub fn at_offset(self, offset: u64) -> Self {
        GpuTokens { offset, ..self }
    }
}

/// The result of a GPU-resident call: buffers on the device, ready for the application's next
/// pass. The queue runs work in submission order, so passes the application submits after
/// this call see the finished tokens without waiting; to read them on the host, wait for
/// `submission` or use `Compressor::read_back`.
#[derive(Debug)]
pub struct GpuCompressed {
    /// Reduced tokens `Y`, `batch x m x d`, row-major, `dtype` elements. Usages: `STORAGE`,
    /// `COPY_SRC`, `COPY_DST`. The buffer is the application's: the compressor keeps no
    /// reference to it.
    pub tokens: wgpu::Buffer,
    /// The element type of `tokens`: the compressor's storage precision (f32 or f16).
    pub dtype: Dtype,
    /// `P`, `batch x m x n`, f32, when asked for.
    pub projection: Option<wgpu::Buffer>,
    /// Images in the batch.
    pub batch: usize,
    /// Tokens per input image `n`.
    pub input_tokens: usize,
    /// Token width `d`.
    pub width: usize,
    /// The query grids; `queries.count` is `m`.
    pub queries: Queries,
    /// The queue submission that computes them.
    pub submission: wgpu::SubmissionIndex,
}

/// The tokens of one group of images (`batch x tokens x width`, sharing a layout): in host
/// memory or in a buffer on the compressor's device.
#[derive(Clone, Copy, Debug)]
pub enum Tokens<'a> {
    /// Host memory: uploaded chunk by chunk.
    Host(HostTokens<'a>),
    /// A buffer on the device.
    Gpu(GpuTokens<'a>),
}

impl Tokens<'_> {
    /// Images, tokens per image and token width.
    pub fn shape(&self) -> (usize, usize, usize) {
        match self {
            Tokens::Host(tokens) => (tokens.batch(), tokens.tokens(), tokens.width()),
            Tokens::Gpu(tokens) => (tokens.batch, tokens.tokens, tokens.width),
        }
    }
}

impl<'a> From<&'a Features> for Tokens<'a> {
    fn from(features: &'a Features) -> Self {
        Tokens::Host(features.into())
    }
}

impl<'a> From<HostTokens<'a>> for Tokens<'a> {
    fn from(tokens: HostTokens<'a>) -> Self {
        Tokens::Host(tokens)
    }
}

impl<'a> From<GpuTokens<'a>> for Tokens<'a> {
    fn from(tokens: GpuTokens<'a>) -> Self {
        Tokens::Gpu(tokens)
    }
}

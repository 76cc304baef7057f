//! Every knob a user sets, and its parsing: where the pass runs (`Backend`, `GpuApi`), in
//! which precision (`Precision`, `Elem`), with which kernels (`KernelVariant`, `SplitK`,
//! `Association`), and the per-call `Options`. Nothing here depends on an engine.

use crate::error::{Error, Result};
use crate::layout::{Keep, Scope};
use crate::tensor::Dtype;

/// A graphics API through which wgpu can reach a GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpuApi {
    /// Whichever API has the best adapter.
    Any,
    /// Vulkan (Linux, Windows, Android; lavapipe in CI).
    Vulkan,
    /// Metal (macOS, iOS).
    Metal,
    /// Direct3D 12 (Windows).
    Dx12,
    /// OpenGL / GLES.
    Gl,
    /// Vulkan, Metal or DX12, whichever this platform has.
    Native,
}

impl GpuApi {
    pub(crate) fn backends(self) -> wgpu::Backends {
        match self {
            GpuApi::Any => wgpu::Backends::all(),
            GpuApi::Vulkan => wgpu::Backends::VULKAN,
            GpuApi::Metal => wgpu::Backends::METAL,
            GpuApi::Dx12 => wgpu::Backends::DX12,
            GpuApi::Gl => wgpu::Backends::GL,
            GpuApi::Native => wgpu::Backends::PRIMARY,
        }
    }

    /// The name used on the command line (`--backend`).
    pub fn name(self) -> &'static str {
        match self {
            GpuApi::Any => "auto",
            GpuApi::Vulkan => "vulkan",
            GpuApi::Metal => "metal",
            GpuApi::Dx12 => "dx12",
            GpuApi::Gl => "gl",
            GpuApi::Native => "vulkan/metal/dx12",
        }
    }
}

/// Element type a kernel stores in a buffer (arithmetic is always f32).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Elem {
    /// 32-bit float.
    F32,
    /// 16-bit float (needs `SHADER_F16`).
    F16,
}

impl Elem {
    /// The same element type as a tensor dtype (for encoding and decoding buffers).
    pub fn dtype(self) -> Dtype {
        match self {
            Elem::F32 => Dtype::F32,
            Elem::F16 => Dtype::F16,
        }
    }

    pub(crate) fn wgsl(self) -> &'static str {
        match self {
            Elem::F32 => "f32",
            Elem::F16 => "f16",
        }
    }
}

/// Invocations `SplitK::Auto` cuts a product until it runs (a quarter of what an H100's 132
/// multiprocessors hold at once; a heuristic).
pub const SPLIT_TARGET_INVOCATIONS: u64 = 65_536;

/// Most threads the CPU path may be given (`--threads`, Python's `threads=`).
pub const MAX_THREADS: usize = 1024;

/// `threads` as a thread count, or the refusal of one outside `1..=MAX_THREADS` (any integer
/// a caller may hold, negative ones too, names itself in the message).
pub fn check_threads(threads: i128) -> Result<usize> {
    match usize::try_from(threads) {
        Ok(count) if (1..=MAX_THREADS).contains(&count) => Ok(count),
        _ => Err(Error::InvalidArgument(format!(
            "--threads {threads} is out of range; expected 1 to {MAX_THREADS}"
        ))),
    }
}

/// The CPU path's thread count: `requested` (checked), else `RAYON_NUM_THREADS`, which rayon
/// would otherwise take unchecked (100 000 threads for a millisecond's job), bounded the same
/// way; `None` for all logical CPUs (`RAYON_NUM_THREADS` unset, empty or 0, as rayon reads
/// it). Anything else is refused in one line.
pub fn threads_from(requested: Option<usize>) -> Result<Option<usize>> {
    if let Some(threads) = requested {
        return check_threads(threads as i128).map(Some);
    }
    let Some(value) = std::env::var_os("RAYON_NUM_THREADS") else {
        return Ok(None);
    };
    let text = value.to_string_lossy();
    match text.trim().parse::<usize>() {
        _ if text.trim().is_empty() => Ok(None),
        Ok(0) => Ok(None),
        Ok(threads) if threads <= MAX_THREADS => Ok(Some(threads)),
        _ => Err(Error::InvalidArgument(format!(
            "RAYON_NUM_THREADS={} is not a thread count; expected 1 to {MAX_THREADS} (0 or \
             unset: all logical CPUs)",
            crate::error::quoted(&text)
        ))),
    }
}

/// The CPU path's threads for a caller that may `fork` (a Python program under
/// `multiprocessing` or a DataLoader worker, a C server): a rayon pool of `threads` (`None`:
/// one per logical CPU), built at the first call of
/// each process. A forked child has no threads of the pool its parent built (`fork` copies
/// the calling thread only), and work handed to that pool would wait for ever; so the pool is
/// rebuilt when the process id is no longer the one it was built in (the parent's is left
/// unused in the child, its threads do not exist there). The bindings run every call in one.
pub struct ProcessPool {
    threads: Option<usize>,
    built: std::sync::Mutex<Option<(u32, std::sync::Arc<rayon::ThreadPool>)>>,
}

impl ProcessPool {
    /// A pool of `threads`, as `threads_from` gives them (`None`: one per logical CPU); no
    /// thread starts before the first call.
    pub const fn new(threads: Option<usize>) -> Self {
        ProcessPool {
            threads,
            built: std::sync::Mutex::new(None),
        }
    }

    /// Runs `work` in this process's pool, building it first where this process has none.
    pub fn install<T: Send>(&self, work: impl FnOnce() -> T + Send) -> Result<T> {
        Ok(self.pool()?.install(work))
    }

    fn pool(&self) -> Result<std::sync::Arc<rayon::ThreadPool>> {
        let process = std::process::id();
        let mut built = self.built.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((owner, pool)) = built.as_ref() {
            if *owner == process {
                return Ok(pool.clone());
            }
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(self.threads.unwrap_or(0))
            .build()
            .map_err(|e| {
                Error::Unsupported(format!(
                    "cannot start the CPU path's {} threads: {e}",
                    self.threads
                        .map_or("default".to_string(), |t| t.to_string())
                ))
            })?;
        let pool = std::sync::Arc::new(pool);
        // A parent's pool is forgotten, not dropped: dropping it would signal threads that
        // this process does not have.
        if let Some(stale) = built.replace((process, pool.clone())) {
            std::mem::forget(stale);
        }
        Ok(pool)
    }
}

/// Most pieces a split-K product is cut into.
pub const MAX_PIECES: u32 = 64;

/// Fewest inner elements a piece gets under `SplitK::Auto`.
pub const MIN_AUTO_PIECE: u32 = 256;

/// Storage precision. Arithmetic and the softmax are f32, except where `F16Acc` says. The GPU
/// backends take `F32`, `F16` and `F16Acc`; the CPU path takes `F32` and `BF16`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Precision {
    /// f32 storage.
    #[default]
    F32,
    /// f16 storage of tokens, weights and intermediates (needs `SHADER_F16`); scores and `P`
    /// stay f32; every sum is f32.
    F16,
    /// As `F16`, and the reduction `Y = P X` sums in f16 (for GPUs whose f16 arithmetic is
    /// faster than f32): runs of 64 tokens in f16, the runs' sums in f32, so that the error
    /// does not grow with `n`. The keys, the queries, the scores and the softmax keep f32 sums:
    /// omega multiplies whatever error the keys carry into the scores, and a large omega
    /// would overflow f16 in the queries.
    F16Acc,
    /// bf16 storage of tokens, weights, queries and keys on the CPU path: products read bf16
    /// values (exact in f32) and sum in f32; the scores, the softmax, `P` and `Y` are f32.
    /// Tokens stored as f32 or f16 are rounded to bf16 as they are read.
    Bf16,
}

impl Precision {
    /// The element type kernels store.
    pub fn elem(self) -> Elem {
        match self {
            // The GPU backends refuse bf16 before they store anything.
            Precision::F32 | Precision::Bf16 => Elem::F32,
            Precision::F16 | Precision::F16Acc => Elem::F16,
        }
    }

    /// The type the reduction sums in.
    pub fn accumulate(self) -> Elem {
        match self {
            Precision::F32 | Precision::F16 | Precision::Bf16 => Elem::F32,
            Precision::F16Acc => Elem::F16,
        }
    }

    /// Bytes per stored element.
    pub fn size(self) -> usize {
        match self {
            Precision::F32 => 4,
            Precision::F16 | Precision::F16Acc | Precision::Bf16 => 2,
        }
    }

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::F16Acc => "f16-acc",
            Precision::Bf16 => "bf16",
        }
    }
}

/// Where the forward pass runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Backend {
    /// A real GPU when there is one; the fast CPU path when the only adapters are software
    /// ones (such as lavapipe, far slower than the CPU path), unless f16 or an
    /// adapter by name is asked for.
    #[default]
    Auto,
    /// Vulkan.
    Vulkan,
    /// Metal.
    Metal,
    /// Direct3D 12.
    #[value(name = "dx12")]
    Dx12,
    /// OpenGL / GLES.
    Gl,
    /// The fast CPU path: f32 or bf16 storage, products through the `gemm` crate (or OpenBLAS
    /// with the `openblas` feature) on all cores (`--threads`, `RAYON_NUM_THREADS`).
    Cpu,
    /// The float64 reference of SPEC section 4: slow, for checking results.
    Reference,
}

impl Backend {
    /// The GPU API this backend opens (none for the CPU backends).
    pub(crate) fn api(self) -> Option<GpuApi> {
        match self {
            Backend::Auto => Some(GpuApi::Any),
            Backend::Vulkan => Some(GpuApi::Vulkan),
            Backend::Metal => Some(GpuApi::Metal),
            Backend::Dx12 => Some(GpuApi::Dx12),
            Backend::Gl => Some(GpuApi::Gl),
            Backend::Cpu | Backend::Reference => None,
        }
    }
}

/// Per-call options.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Keep fraction `k` (default 0.1).
    pub keep: Keep,
    /// Softmax scope (default `image`).
    pub scope: Scope,
    /// Whether to hand back `P` as well as `Y`.
    pub save_projection: bool,
    /// Testing aid: fill every GPU buffer a kernel writes with NaN before the run, so an
    /// element no kernel writes cannot pass for a right one.
    pub poison: bool,
    /// Which GPU kernels run: the tuned ones unless a benchmark or test asks for the naive
    /// kernels.
    pub kernels: KernelVariant,
    /// How the scores are multiplied out (chosen by cost unless a test asks; the GPU and
    /// the CPU path).
    pub association: Association,
    /// Whether to time each step (GPU timestamps where the device has them) and hand the
    /// times back in `Compressed::profile`.
    pub profile: bool,
    /// A storage-binding limit lower than the device's, so that smaller inputs are cut into
    /// chunks too (for tests of the chunked path); `None` uses the device's limit.
    pub max_binding_bytes: Option<u64>,
    /// Whether the GPU's matrix products cut their inner dimension into pieces (split-K).
    pub split_k: SplitK,
}

/// Split-K: a matrix product with few output tiles and a long inner dimension (the queries
/// `m x d_c` and the scores `m x n` over `d` = 4096, when `m` is 29-292) keeps only tens of
/// workgroups busy on a GPU with thousands of cores; cut into pieces along the inner
/// dimension, each piece's partial product runs in workgroups of its own and a second pass
/// adds them up. Only for the products that write f32 (all of them in f32; the queries, the
/// scores and `Q''` in f16); never for an image cut into token ranges.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SplitK {
    /// On hardware adapters, each product is cut until it runs about
    /// `SPLIT_TARGET_INVOCATIONS` invocations, with at least
    /// `MIN_AUTO_PIECE` inner elements a piece; on software adapters
    /// (device type CPU, such as lavapipe), whose few cores any product keeps busy, never.
    #[default]
    Auto,
    /// Never.
    Off,
    /// Into this many pieces wherever the inner dimension allows (pieces are multiples of 16
    /// elements, so a short one gets fewer): for tests and benchmarks.
    Pieces(u32),
}

impl SplitK {
    /// What `Auto` means on an adapter that is (`software`) or is not a software one.
    pub fn resolve(self, software: bool) -> Self {
        match self {
            SplitK::Auto if software => SplitK::Off,
            other => other,
        }
    }

    /// The name in reports: `auto`, `off` or the piece count.
    pub fn name(self) -> String {
        match self {
            SplitK::Auto => "auto".into(),
            SplitK::Off => "off".into(),
            SplitK::Pieces(pieces) => pieces.to_string(),
        }
    }
}

impl std::str::FromStr for SplitK {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        match text {
            "auto" => Ok(SplitK::Auto),
            "off" => Ok(SplitK::Off),
            _ => match text.parse::<u32>() {
                Ok(pieces) if (1..=MAX_PIECES).contains(&pieces) => Ok(SplitK::Pieces(pieces)),
                _ => Err(format!(
                    "split-K {text:?}: expected auto, off or a piece count from 1 to {MAX_PIECES}"
                )),
            },
        }
    }
}

/// Which GPU kernels a call runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum KernelVariant {
    /// The first kernels: one output per invocation; with `Association::Auto`, the scores
    /// through the keys. Kept as the yardstick benchmarks show the speed-up against.
    Naive,
    /// Register-tiled matrix products; with `Association::Auto`, the cheaper association.
    #[default]
    Tuned,
    /// Matrix products tiled through workgroup memory (64 x 64 per workgroup), otherwise as
    /// `Tuned`: the shape hardware GPUs favour, measured against `Tuned` by `bench --shared`.
    Shared,
}

impl KernelVariant {
    /// Both, for tests and benchmarks.
    pub const ALL: [KernelVariant; 3] = [
        KernelVariant::Naive,
        KernelVariant::Tuned,
        KernelVariant::Shared,
    ];

    /// The name in reports.
    pub fn name(self) -> &'static str {
        match self {
            KernelVariant::Naive => "naive",
            KernelVariant::Tuned => "tuned",
            KernelVariant::Shared => "shared",
        }
    }
}

/// The order in which the scores `S = (Q omega) K^T / sqrt(d_c)` are multiplied out
/// (`Q = Q_in w_q`, `K = Xp w_k`); both give the same `S` up to rounding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Association {
    /// The cheaper of the two for the shapes (`Keys` for the naive kernels).
    #[default]
    Auto,
    /// `K = Xp w_k` first, then `S = Q' K^T`: `2 n d d_c + 2 m n d_c` flops per image.
    Keys,
    /// `Q'' = Q' w_k^T` first, then `S = Q'' Xp^T`: `2 m d_c d + 2 m n d` flops per image,
    /// fewer when there are fewer queries than projection channels.
    Tokens,
}

impl Association {
    /// `Keys` or `Tokens` for `n` tokens of width `d`, `m` queries and `d_c` channels.
    pub fn resolve(self, kernels: KernelVariant, n: usize, m: usize, d: usize, c: usize) -> Self {
        match (self, kernels) {
            (Association::Auto, KernelVariant::Naive) => Association::Keys,
            (Association::Auto, KernelVariant::Tuned | KernelVariant::Shared) => {
                let tokens = Association::Tokens.scores_work(n, m, d, c);
                if tokens < Association::Keys.scores_work(n, m, d, c) {
                    Association::Tokens
                } else {
                    Association::Keys
                }
            }
            (chosen, _) => chosen,
        }
    }

    /// Multiply-adds per image of the two products that lead to `S` in this (resolved)
    /// order: `K` and `S`, or `Q''` and `S`.
    pub(crate) fn scores_work(self, n: usize, m: usize, d: usize, c: usize) -> u128 {
        let (n, m, d, c) = (n as u128, m as u128, d as u128, c as u128);
        match self {
            Association::Keys => n * d * c + m * n * c,
            Association::Tokens | Association::Auto => m * c * d + m * n * d,
        }
    }

    /// The name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Association::Auto => "auto",
            Association::Keys => "keys",
            Association::Tokens => "tokens",
        }
    }
}

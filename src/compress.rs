//! The compressor: weights checked once, a backend chosen once, any number of calls.

use crate::error::{Error, Result};
use crate::gpu::forward::{GpuOutput, PendingOutput};
use crate::gpu::memory::MemoryCount;
use crate::gpu::plan::Group;
use crate::gpu::resident::{GpuCompressed, GpuTokens};
use crate::gpu::{GpuApi, GpuContext, GpuEngine};
use crate::kernels::matmul::{MatmulVariant, MAX_PIECES};
use crate::layout::{Keep, Layout, Queries, Scope};
use crate::profile::{Clock, Profile, StepTime};
use crate::reference;
use crate::shaders::Elem;
use crate::tensor::{Features, HostTokens};
use crate::weights::PMeta;

/// Storage precision of the GPU path. Arithmetic and the softmax are f32, except where
/// `F16Acc` says.
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
}

impl Precision {
    /// The element type kernels store.
    pub fn elem(self) -> Elem {
        match self {
            Precision::F32 => Elem::F32,
            Precision::F16 | Precision::F16Acc => Elem::F16,
        }
    }

    /// The type the reduction sums in.
    pub fn accumulate(self) -> Elem {
        match self {
            Precision::F32 | Precision::F16 => Elem::F32,
            Precision::F16Acc => Elem::F16,
        }
    }

    /// Bytes per stored element.
    pub fn size(self) -> usize {
        match self {
            Precision::F32 => 4,
            Precision::F16 | Precision::F16Acc => 2,
        }
    }

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::F16Acc => "f16-acc",
        }
    }
}

/// Where the forward pass runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Backend {
    /// A real GPU when there is one; the fast CPU path when the only adapters are software
    /// ones (such as lavapipe, about 100 times slower than the CPU path), unless f16 or an
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
    /// The fast CPU path: f32, all cores, cache-blocked products.
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
    /// Which GPU kernels run: the tuned ones unless a benchmark or test asks for the v1
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
    /// `kernels::matmul::SPLIT_TARGET_INVOCATIONS` invocations, with at least
    /// `kernels::matmul::MIN_AUTO_PIECE` inner elements a piece; on software adapters
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
    /// The v1 kernels: one output per invocation; with `Association::Auto`, the scores
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

    pub(crate) fn matmul(self) -> MatmulVariant {
        match self {
            KernelVariant::Naive => MatmulVariant::Naive,
            KernelVariant::Tuned => MatmulVariant::Tiled,
            KernelVariant::Shared => MatmulVariant::Shared,
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
    fn scores_work(self, n: usize, m: usize, d: usize, c: usize) -> u128 {
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

/// The result of one call.
#[derive(Clone, Debug)]
pub struct Compressed {
    /// Reduced tokens `Y`, `batch x m x d`, row-major.
    pub tokens: Vec<f32>,
    /// The compression projection `P`, `batch x m x n`, when asked for.
    pub projection: Option<Vec<f32>>,
    /// Images in the batch.
    pub batch: usize,
    /// Tokens per input image `n`.
    pub input_tokens: usize,
    /// Token width `d`.
    pub width: usize,
    /// The query grids; `queries.count` is `m`.
    pub queries: Queries,
    /// The time of each step, when `Options::profile` asked for it.
    pub profile: Option<Profile>,
}

enum Engine {
    Reference,
    Cpu(Option<crate::cpu::ProjectedTable>),
    Gpu(Box<GpuEngine>),
}

/// P_meta weights bound to a backend, ready to compress any number of batches.
pub struct Compressor {
    weights: PMeta,
    precision: Precision,
    engine: Engine,
    /// Why `Backend::Auto` chose what it chose, for people.
    choice: Option<String>,
}

impl Compressor {
    /// Opens `backend` (an adapter whose name contains `adapter`, if given) and prepares the
    /// weights at `precision`. The CPU backends take f32 only.
    pub fn new(
        weights: PMeta,
        backend: Backend,
        adapter: Option<&str>,
        precision: Precision,
    ) -> Result<Self> {
        let (opened, choice) = open_backend(backend, adapter, precision)?;
        let engine = match opened {
            Opened::Reference => Engine::Reference,
            Opened::Cpu => Engine::Cpu(crate::cpu::ProjectedTable::of(&weights)),
            Opened::Gpu(context) => {
                let mut compressor = Compressor::on_context(weights, *context, precision)?;
                compressor.choice = choice;
                return Ok(compressor);
            }
        };
        Ok(Compressor {
            weights,
            precision,
            engine,
            choice,
        })
    }

    /// Prepares the weights at `precision` on a device already open (several compressors
    /// may share one context).
    pub fn on_context(weights: PMeta, context: GpuContext, precision: Precision) -> Result<Self> {
        let engine = GpuEngine::new(context, &weights, precision)?;
        Ok(Compressor {
            weights,
            precision,
            engine: Engine::Gpu(Box::new(engine)),
            choice: None,
        })
    }

    /// Why `Backend::Auto` chose this device, if it was asked to choose.
    pub fn choice(&self) -> Option<&str> {
        self.choice.as_deref()
    }

    /// What runs the pass, for people: the adapter and API, or the CPU path.
    pub fn device(&self) -> String {
        match &self.engine {
            Engine::Reference => REFERENCE_DEVICE.to_string(),
            Engine::Cpu(_) => CPU_DEVICE.to_string(),
            Engine::Gpu(engine) => engine.context().describe(self.precision),
        }
    }

    /// The device the compressor runs on (`None` on a CPU backend).
    pub fn context(&self) -> Option<&GpuContext> {
        match &self.engine {
            Engine::Gpu(engine) => Some(engine.context()),
            _ => None,
        }
    }

    /// Whether it runs the float64 reference.
    pub(crate) fn is_reference(&self) -> bool {
        matches!(self.engine, Engine::Reference)
    }

    /// The storage precision of its GPU buffers.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The weights.
    pub fn weights(&self) -> &PMeta {
        &self.weights
    }

    /// Compresses every image of `features` (all sharing `layout`) to `m` tokens each.
    pub fn compress(
        &self,
        features: &Features,
        layout: &Layout,
        options: &Options,
    ) -> Result<Compressed> {
        match &self.engine {
            Engine::Gpu(_) => self.compress_tokens(features.into(), layout, options),
            _ => {
                let queries = self.check_groups(&[(features.into(), layout)], options)?;
                let queries = queries.into_iter().next().expect("one group");
                self.compress_on_cpu(features, layout, queries, options)
            }
        }
    }

    /// Compresses `tokens` (f32, f16 or bf16 in host memory, or a buffer on this
    /// compressor's device) sharing `layout`, and waits for the reduced tokens on the host.
    pub fn compress_tokens(
        &self,
        tokens: Tokens,
        layout: &Layout,
        options: &Options,
    ) -> Result<Compressed> {
        let mut results = self.compress_batch(&[(tokens, layout)], options)?;
        Ok(results.pop().expect("one result per group"))
    }

    /// Compresses the `features` tensor of a safetensors input file (SPEC section 3), on the
    /// layout of its `grids` metadata, or one square grid without it.
    pub fn compress_file(&self, path: &std::path::Path, options: &Options) -> Result<Compressed> {
        let input = crate::files::read_input(path)?;
        let layout = match input.grids {
            Some(grids) => Layout::new(input.features.tokens(), grids)?,
            None => Layout::square(input.features.tokens())?,
        };
        self.compress(&input.features, &layout, options)
    }

    /// Compresses several groups of images, each with its own layout (anyres grids of
    /// different shapes, say), in one queue submission on the GPU; one result per group, in
    /// order. Equal to compressing each group alone.
    pub fn compress_batch(
        &self,
        groups: &[(Tokens, &Layout)],
        options: &Options,
    ) -> Result<Vec<Compressed>> {
        let started = std::time::Instant::now();
        let queries = self.check_groups(groups, options)?;
        match &self.engine {
            Engine::Gpu(engine) => {
                let plan_groups = plan_groups(groups, &queries);
                let outputs = engine.run(&plan_groups, options)?;
                Ok(finish(
                    group_shapes(groups, queries),
                    outputs,
                    options,
                    started,
                ))
            }
            _ => groups
                .iter()
                .zip(queries)
                .map(|((tokens, layout), queries)| match tokens {
                    Tokens::Host(host) => {
                        self.compress_on_cpu(&host.to_features(), layout, queries, options)
                    }
                    Tokens::Gpu(_) => Err(self.needs_gpu()),
                })
                .collect(),
        }
    }

    /// Starts compressing `groups` and returns at once; the future resolves to the results
    /// when the device is done (it needs no particular executor: a helper thread waits for the
    /// GPU and wakes it). On the CPU backends the work is done before this returns.
    pub fn compress_async(
        &self,
        groups: &[(Tokens, &Layout)],
        options: &Options,
    ) -> Result<CompressFuture> {
        let started = std::time::Instant::now();
        let queries = self.check_groups(groups, options)?;
        let Engine::Gpu(engine) = &self.engine else {
            return Ok(CompressFuture {
                state: FutureState::Ready(Some(self.compress_batch(groups, options))),
            });
        };
        let plan_groups = plan_groups(groups, &queries);
        let pending = engine.run_async(&plan_groups, options)?;
        Ok(CompressFuture {
            state: FutureState::Gpu {
                pending: Box::new(pending),
                shapes: group_shapes(groups, queries),
                options: *options,
                started,
            },
        })
    }

    /// Compresses tokens already on the device and hands the reduced tokens back as a device
    /// buffer, without a copy through the host and without waiting: the application's next
    /// submission on the same queue sees them. GPU backends only.
    pub fn compress_on_gpu(
        &self,
        tokens: GpuTokens,
        layout: &Layout,
        options: &Options,
    ) -> Result<GpuCompressed> {
        let Engine::Gpu(engine) = &self.engine else {
            return Err(self.needs_gpu());
        };
        let groups = [(Tokens::Gpu(tokens), layout)];
        let queries = self
            .check_groups(&groups, options)?
            .pop()
            .expect("one group");
        let plan_groups = plan_groups(&groups, std::slice::from_ref(&queries));
        let (buffer, projection, submission) = engine.run_resident(&plan_groups[0], options)?;
        Ok(GpuCompressed {
            tokens: buffer,
            dtype: self.precision.elem().dtype(),
            projection,
            batch: tokens.batch,
            input_tokens: tokens.tokens,
            width: tokens.width,
            queries,
            submission,
        })
    }

    /// Copies the outputs of a GPU-resident call to the host (waits for the device).
    pub fn read_back(&self, output: &GpuCompressed) -> Result<Compressed> {
        let Engine::Gpu(engine) = &self.engine else {
            return Err(Error::Unsupported(
                "read_back is for outputs of compress_on_gpu".to_string(),
            ));
        };
        let m = output.queries.count;
        let (b, n, d) = (output.batch, output.input_tokens, output.width);
        let tokens = crate::gpu::buffers::elem_values(
            &engine.read_buffer(&output.tokens)?,
            self.precision.elem(),
            b * m * d,
        );
        let projection = match &output.projection {
            Some(buffer) => Some(crate::gpu::buffers::elem_values(
                &engine.read_buffer(buffer)?,
                Elem::F32,
                b * m * n,
            )),
            None => None,
        };
        Ok(Compressed {
            tokens,
            projection,
            batch: b,
            input_tokens: n,
            width: d,
            queries: output.queries.clone(),
            profile: None,
        })
    }

    /// GPU memory the compressor holds between calls, in bytes: its weights and the free
    /// buffers it keeps for reuse (see `set_pool_limit`, `trim`); 0 on the CPU backends.
    pub fn held_bytes(&self) -> u64 {
        match &self.engine {
            Engine::Gpu(engine) => engine.weight_bytes() + engine.ledger().count().pooled_bytes,
            _ => 0,
        }
    }

    /// Sets the most bytes of free buffers the compressor keeps between calls for reuse
    /// (default 256 MiB; 0 keeps none), letting go of what it keeps beyond that.
    pub fn set_pool_limit(&self, bytes: u64) {
        if let Engine::Gpu(engine) = &self.engine {
            engine.ledger().set_pool_limit(bytes);
        }
    }

    /// Lets go of every buffer kept for reuse: the compressor then holds only its weights.
    pub fn trim(&self) {
        if let Engine::Gpu(engine) = &self.engine {
            engine.ledger().trim();
        }
    }

    /// Every buffer the compressor has counted: alive now (weights and calls in progress),
    /// the most alive at once, and how many were made. `None` on the CPU backends.
    pub fn memory(&self) -> Option<MemoryCount> {
        match &self.engine {
            Engine::Gpu(engine) => Some(engine.ledger().count()),
            _ => None,
        }
    }

    /// Bytes of GPU memory a blocking call on `groups` with `options` would allocate (besides
    /// what the compressor holds, and 32 bytes of parameters per kernel). Fails as the call
    /// would: when it cannot fit. 0 on the CPU backends.
    pub fn call_bytes(&self, groups: &[(Tokens, &Layout)], options: &Options) -> Result<u64> {
        let queries = self.check_groups(groups, options)?;
        match &self.engine {
            Engine::Gpu(engine) => {
                let plan_groups = plan_groups(groups, &queries);
                Ok(engine.plan(&plan_groups, options, true)?.bytes)
            }
            _ => Ok(0),
        }
    }

    /// Sets the most bytes one call may allocate on the GPU (`None`: no budget, only the
    /// device's limits); a call over it fails with `Error::TooLarge` before any device work.
    pub fn set_memory_budget(&self, bytes: Option<u64>) {
        if let Engine::Gpu(engine) = &self.engine {
            engine.set_budget(bytes);
        }
    }

    /// Why the device was lost, once it is: every later call fails with
    /// `Error::DeviceLost`, and a new compressor must be built.
    pub fn device_lost(&self) -> Option<String> {
        match &self.engine {
            Engine::Gpu(engine) => engine.context().lost(),
            _ => None,
        }
    }

    /// The error for GPU-resident tokens on a CPU backend.
    fn needs_gpu(&self) -> Error {
        Error::Unsupported(format!(
            "GPU-resident tokens need a GPU backend; this compressor runs on {}",
            self.device()
        ))
    }

    /// Checks each group against the weights and its layout; the queries of each.
    fn check_groups(
        &self,
        groups: &[(Tokens, &Layout)],
        options: &Options,
    ) -> Result<Vec<Queries>> {
        if groups.is_empty() {
            return Err(Error::InvalidArgument(
                "a batch of 0 groups; expected at least one".to_string(),
            ));
        }
        groups
            .iter()
            .map(|(tokens, layout)| {
                let (_, n, d) = tokens.shape();
                if d != self.weights.width() {
                    return Err(Error::InvalidTensor(format!(
                        "features have width d = {d}; the weights expect d = {}",
                        self.weights.width()
                    )));
                }
                layout.check_tokens(n)?;
                Ok(layout.queries(options.keep))
            })
            .collect()
    }

    /// One group on a CPU backend.
    fn compress_on_cpu(
        &self,
        features: &Features,
        layout: &Layout,
        queries: Queries,
        options: &Options,
    ) -> Result<Compressed> {
        let started = std::time::Instant::now();
        let (tokens, projection, timings) = match &self.engine {
            Engine::Reference => {
                let result =
                    reference::forward(features, &self.weights, layout, &queries, options.scope);
                let narrow = |values: Vec<f64>| values.into_iter().map(|v| v as f32).collect();
                (
                    narrow(result.tokens),
                    options.save_projection.then(|| narrow(result.projection)),
                    None,
                )
            }
            engine => {
                let table = match engine {
                    Engine::Cpu(table) => table.as_ref(),
                    _ => None,
                };
                let (tokens, projection) = crate::cpu::forward(
                    features,
                    &self.weights,
                    table,
                    layout,
                    &queries,
                    options.scope,
                    options.association,
                    options.save_projection,
                );
                let seconds = started.elapsed().as_secs_f64();
                let step = cpu_step(features, &self.weights, queries.count, options.association);
                (
                    tokens,
                    projection,
                    Some((Clock::HostPerCall, vec![StepTime::of(&step, seconds)])),
                )
            }
        };
        let call_seconds = started.elapsed().as_secs_f64();
        Ok(Compressed {
            tokens,
            projection,
            batch: features.batch(),
            input_tokens: features.tokens(),
            width: features.width(),
            queries,
            profile: profile_of(timings, options, call_seconds),
        })
    }
}

/// What runs the pass on `--backend reference`, for people.
pub(crate) const REFERENCE_DEVICE: &str = "cpu (float64 reference)";
/// What runs the pass on `--backend cpu`, for people.
pub(crate) const CPU_DEVICE: &str = "cpu (f32, multi-threaded sgemm)";

/// Where a backend choice lands: one of the CPU engines, or a device.
pub(crate) enum Opened {
    /// The float64 reference.
    Reference,
    /// The fast CPU path.
    Cpu,
    /// A GPU adapter's device.
    Gpu(Box<GpuContext>),
}

/// Opens `backend` (an adapter whose name contains `adapter`, if given) for `precision`;
/// with `Backend::Auto`, also why it chose what it chose. The CPU engines take f32 only.
pub(crate) fn open_backend(
    backend: Backend,
    adapter: Option<&str>,
    precision: Precision,
) -> Result<(Opened, Option<String>)> {
    // The CPU engines, with their names and arithmetic for the f16 refusal.
    let cpu_engine = match backend {
        Backend::Cpu => Some((Opened::Cpu, "cpu", "f32")),
        Backend::Reference => Some((Opened::Reference, "reference", "float64")),
        _ => None,
    };
    if let Some((opened, name, arithmetic)) = cpu_engine {
        if precision != Precision::F32 {
            return Err(Error::InvalidArgument(format!(
                "--precision {} is for GPU backends; the {name} backend computes in \
                 {arithmetic} (use --precision f32)",
                precision.name(),
            )));
        }
        return Ok((opened, None));
    }
    let api = backend.api().expect("GPU backends have an API");
    let context = GpuContext::open(api, adapter)?;
    if backend != Backend::Auto {
        return Ok((Opened::Gpu(Box::new(context)), None));
    }
    if adapter.is_none() && precision == Precision::F32 && context.is_software() {
        let choice = format!(
            "auto chose the cpu path: the only GPU adapter is software ({})",
            context.adapter.name
        );
        return Ok((Opened::Cpu, Some(choice)));
    }
    Ok((
        Opened::Gpu(Box::new(context)),
        Some("auto chose the best GPU adapter".to_string()),
    ))
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

/// The engine's view of a call's groups.
fn plan_groups<'a>(groups: &[(Tokens<'a>, &'a Layout)], queries: &'a [Queries]) -> Vec<Group<'a>> {
    groups
        .iter()
        .zip(queries)
        .map(|((tokens, layout), queries)| Group {
            source: *tokens,
            layout,
            queries,
        })
        .collect()
}

/// The profile a call hands back, if asked for and timed.
fn profile_of(
    timings: Option<(Clock, Vec<StepTime>)>,
    options: &Options,
    call_seconds: f64,
) -> Option<Profile> {
    match timings {
        Some((clock, steps)) if options.profile => Some(Profile {
            clock,
            steps,
            call_seconds,
        }),
        _ => None,
    }
}

/// Each group's images, tokens per image and width, with its queries: what a result needs
/// besides the engine's outputs.
fn group_shapes(
    groups: &[(Tokens, &Layout)],
    queries: Vec<Queries>,
) -> Vec<(usize, usize, usize, Queries)> {
    groups
        .iter()
        .zip(queries)
        .map(|((tokens, _), queries)| {
            let (batch, n, d) = tokens.shape();
            (batch, n, d, queries)
        })
        .collect()
}

/// One `Compressed` per group from the engine's outputs.
fn finish(
    shapes: Vec<(usize, usize, usize, Queries)>,
    outputs: Vec<GpuOutput>,
    options: &Options,
    started: std::time::Instant,
) -> Vec<Compressed> {
    let call_seconds = started.elapsed().as_secs_f64();
    shapes
        .into_iter()
        .zip(outputs)
        .map(|((batch, n, d, queries), output)| Compressed {
            tokens: output.tokens,
            projection: output.projection,
            batch,
            input_tokens: n,
            width: d,
            queries,
            profile: profile_of(output.timings, options, call_seconds),
        })
        .collect()
}

/// A call in progress (`Compressor::compress_async`): resolves to one result per group.
pub struct CompressFuture {
    state: FutureState,
}

enum FutureState {
    Ready(Option<Result<Vec<Compressed>>>),
    Gpu {
        pending: Box<PendingOutput>,
        shapes: Vec<(usize, usize, usize, Queries)>,
        options: Options,
        started: std::time::Instant,
    },
}

impl std::future::Future for CompressFuture {
    type Output = Result<Vec<Compressed>>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match &mut self.state {
            FutureState::Ready(result) => {
                std::task::Poll::Ready(result.take().expect("polled after completion"))
            }
            FutureState::Gpu {
                pending,
                shapes,
                options,
                started,
            } => match std::pin::Pin::new(pending.as_mut()).poll(cx) {
                std::task::Poll::Pending => std::task::Poll::Pending,
                std::task::Poll::Ready(outputs) => std::task::Poll::Ready(
                    outputs
                        .map(|outputs| finish(std::mem::take(shapes), outputs, options, *started)),
                ),
            },
        }
    }
}

/// The CPU path's forward pass as one step: its products' flops (in the association it takes)
/// and the features, weights and tokens it must move.
fn cpu_step(
    features: &Features,
    weights: &PMeta,
    m: usize,
    association: Association,
) -> crate::kernels::Step {
    let (n, d, c) = (features.tokens(), features.width(), weights.channels());
    let scores = association
        .resolve(KernelVariant::Tuned, n, m, d, c)
        .scores_work(n, m, d, c) as f64;
    let b = features.batch() as f64;
    let (n, m, d, c) = (n as f64, m as f64, d as f64, c as f64);
    crate::kernels::Step {
        name: "forward",
        flops: 2.0 * b * (m * d * c + scores + m * n * d),
        bytes: 4.0 * (b * n * d + 2.0 * d * c + b * m * d),
    }
}

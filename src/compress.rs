//! The compressor: weights checked once, a backend chosen once, any number of calls.

use crate::error::{Error, Result};
use crate::gpu::{GpuApi, GpuContext, GpuEngine};
use crate::kernels::matmul::MatmulVariant;
use crate::layout::{Keep, Layout, Queries, Scope};
use crate::profile::{Clock, Profile, StepTime};
use crate::reference;
use crate::shaders::Elem;
use crate::tensor::Features;
use crate::weights::PMeta;

/// Storage precision of the GPU path. Arithmetic and the softmax are always f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Precision {
    /// f32 storage.
    #[default]
    F32,
    /// f16 storage of tokens, weights and intermediates (needs `SHADER_F16`); scores and `P`
    /// stay f32.
    F16,
}

impl Precision {
    /// The element type kernels store.
    pub fn elem(self) -> Elem {
        match self {
            Precision::F32 => Elem::F32,
            Precision::F16 => Elem::F16,
        }
    }

    /// Bytes per stored element.
    pub fn size(self) -> usize {
        match self {
            Precision::F32 => 4,
            Precision::F16 => 2,
        }
    }

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
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
}

impl KernelVariant {
    /// Both, for tests and benchmarks.
    pub const ALL: [KernelVariant; 2] = [KernelVariant::Naive, KernelVariant::Tuned];

    /// The name in reports.
    pub fn name(self) -> &'static str {
        match self {
            KernelVariant::Naive => "naive",
            KernelVariant::Tuned => "tuned",
        }
    }

    pub(crate) fn matmul(self) -> MatmulVariant {
        match self {
            KernelVariant::Naive => MatmulVariant::Naive,
            KernelVariant::Tuned => MatmulVariant::Tiled,
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
            (Association::Auto, KernelVariant::Tuned) => {
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
    Cpu,
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
        // The CPU engines, with their names and arithmetic for the f16 refusal.
        let cpu_engine = match backend {
            Backend::Cpu => Some((Engine::Cpu, "cpu", "f32")),
            Backend::Reference => Some((Engine::Reference, "reference", "float64")),
            _ => None,
        };
        if let Some((engine, name, arithmetic)) = cpu_engine {
            if precision != Precision::F32 {
                return Err(Error::InvalidArgument(format!(
                    "--precision {} is for GPU backends; the {name} backend computes in \
                     {arithmetic} (use --precision f32)",
                    precision.name(),
                )));
            }
            return Ok(Compressor {
                weights,
                precision,
                engine,
                choice: None,
            });
        }
        let api = backend.api().expect("GPU backends have an API");
        let context = GpuContext::open(api, adapter)?;
        if backend == Backend::Auto
            && adapter.is_none()
            && precision == Precision::F32
            && context.adapter.device_type == "cpu"
        {
            return Ok(Compressor {
                weights,
                precision,
                engine: Engine::Cpu,
                choice: Some(format!(
                    "auto chose the cpu path: the only GPU adapter is software ({})",
                    context.adapter.name
                )),
            });
        }
        let mut compressor = Compressor::on_context(weights, context, precision)?;
        if backend == Backend::Auto {
            compressor.choice = Some("auto chose the best GPU adapter".to_string());
        }
        Ok(compressor)
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
            Engine::Reference => "cpu (float64 reference)".to_string(),
            Engine::Cpu => "cpu (f32, multi-threaded sgemm)".to_string(),
            Engine::Gpu(engine) => {
                let adapter = &engine.context().adapter;
                format!(
                    "{} ({}, {}, {})",
                    adapter.name,
                    adapter.backend,
                    adapter.device_type,
                    self.precision.name()
                )
            }
        }
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
        if features.width() != self.weights.width() {
            return Err(Error::InvalidTensor(format!(
                "features have width d = {}; the weights expect d = {}",
                features.width(),
                self.weights.width()
            )));
        }
        if layout.tokens() != features.tokens() {
            return Err(Error::InvalidArgument(format!(
                "the layout describes {} tokens; the features hold n = {}",
                layout.tokens(),
                features.tokens()
            )));
        }
        let queries = layout.queries(options.keep);
        let started = std::time::Instant::now();
        let (tokens, projection, timings) = match &self.engine {
            Engine::Cpu => {
                let (tokens, projection) = crate::cpu::forward(
                    features,
                    &self.weights,
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
            Engine::Gpu(engine) => {
                let output = engine.run(features, layout, &queries, options)?;
                (output.tokens, output.projection, output.timings)
            }
        };
        let call_seconds = started.elapsed().as_secs_f64();
        let profile = match timings {
            Some((clock, steps)) if options.profile => Some(Profile {
                clock,
                steps,
                call_seconds,
            }),
            _ => None,
        };
        Ok(Compressed {
            tokens,
            projection,
            batch: features.batch(),
            input_tokens: features.tokens(),
            width: features.width(),
            queries,
            profile,
        })
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

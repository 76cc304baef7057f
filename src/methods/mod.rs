//! Every token-reduction method as a compression projection `P`: MetaCompress and
//! the heuristic baselines it generalises. Each method builds its `P` (`m x n` per image,
//! with the same query grids, hence the same `m`, as `metacompress` at the same keep) and
//! the reduced tokens are `Y = P X` through the same reduction kernel, on the GPU or the CPU
//! path. The baselines build `P` on the host as their authors' code computes it (SPEC v3:
//! non-negative, rows summing to 1 only where the authors' do), each at its authors' scope
//! (SPEC section 4, v4; `Method::scope`): `divprune` and `random` at scope `image` choose
//! among all `n` tokens of the image, loose ones included, and at scope `grid` grid by grid;
//! `pool` and `sample` are defined per grid, and `tome`, `visionzip` and `prumerge` run per
//! grid whatever the scope (their authors run them inside the vision tower, tile by tile).
//! A per-grid row only weighs tokens of its own grid, and loose tokens get no weight.

mod attention;
mod divprune;
mod grid;
mod similarity;
mod tome;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::backend::{open_backend, Opened, REFERENCE_DEVICE};
use crate::compress::{Compressed, Compressor};
use crate::cpu::cpu_device;
use crate::error::{Error, Result};
use crate::gpu::reduction::GpuReduction;
use crate::gpu::resident::Tokens;
use crate::gpu::GpuContext;
use crate::layout::{Layout, Queries, QueryGrid, Scope};
use crate::options::{Backend, Options, Precision};
use crate::reference;
pub use crate::tensor::check_attention;
use crate::tensor::{check_computed, host_bytes, Features, HostTokens, HOST_BUDGET};
use crate::weights::PMeta;

pub use grid::sample_cell;

/// One row of `P` as `(token, weight)` pairs (every other entry is 0).
pub type Row = Vec<(usize, f32)>;

/// A token-reduction method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Method {
    /// P_meta (SPEC section 4): needs weights.
    #[value(name = "metacompress")]
    MetaCompress,
    /// Adaptive average pooling over each grid.
    Pool,
    /// Equidistant sampling: the centre cell of each pooling window.
    Sample,
    /// A uniformly random subset of each grid's tokens (from `--seed`).
    Random,
    /// Bipartite soft matching (Token Merging) until `m` tokens remain.
    Tome,
    /// Greedy max-min diversity (DivPrune).
    #[value(name = "divprune")]
    DivPrune,
    /// [CLS] stand-in, the most attended tokens, contextual targets plus means (VisionZip):
    /// needs `attention`.
    #[value(name = "visionzip")]
    VisionZip,
    /// Attention outliers and a spatial supplement, each plus its 32 nearest tokens weighed
    /// by attention, and one extra token (LLaVA-PruMerge+): needs `attention`.
    #[value(name = "prumerge")]
    PruMerge,
}

impl Method {
    /// Every method, in the order tables list them.
    pub const ALL: [Method; 8] = [
        Method::MetaCompress,
        Method::Pool,
        Method::Sample,
        Method::Random,
        Method::Tome,
        Method::DivPrune,
        Method::VisionZip,
        Method::PruMerge,
    ];

    /// The name on the command line and in output metadata.
    pub fn name(self) -> &'static str {
        match self {
            Method::MetaCompress => "metacompress",
            Method::Pool => "pool",
            Method::Sample => "sample",
            Method::Random => "random",
            Method::Tome => "tome",
            Method::DivPrune => "divprune",
            Method::VisionZip => "visionzip",
            Method::PruMerge => "prumerge",
        }
    }

    /// Whether the method needs P_meta weights.
    pub fn needs_weights(self) -> bool {
        self == Method::MetaCompress
    }

    /// Whether the method needs the vision tower's attention over the tokens.
    pub fn needs_attention(self) -> bool {
        matches!(self, Method::VisionZip | Method::PruMerge)
    }

    /// The scope the method runs at when `requested` is asked for (SPEC section 4, v4):
    /// `requested` for `metacompress`, `divprune` and `random`; `grid` for the others, which
    /// are defined per grid (`pool`, `sample`) or run per tile by their authors (`tome`,
    /// `visionzip`, `prumerge`). Output metadata names this scope.
    pub fn scope(self, requested: Scope) -> Scope {
        match self {
            Method::MetaCompress | Method::DivPrune | Method::Random => requested,
            Method::Pool | Method::Sample | Method::Tome | Method::VisionZip | Method::PruMerge => {
                Scope::Grid
            }
        }
    }

    /// The scope its authors run it at, which evaluations use by default: `image` for
    /// `metacompress` (the paper's default), `divprune` (the packed sequence) and `random`;
    /// `grid` for the others.
    pub fn authors_scope(self) -> Scope {
        self.scope(Scope::Image)
    }

    /// Whether every row of its `P` is one-hot (pruning) rather than spread (merging).
    pub fn prunes(self) -> bool {
        matches!(self, Method::Sample | Method::Random | Method::DivPrune)
    }

    /// Why the method cannot run without what is missing, or `Ok` when it can.
    pub fn check_inputs(self, has_weights: bool, has_attention: bool) -> Result<()> {
        if self.needs_weights() && !has_weights {
            return Err(Error::InvalidArgument(format!(
                "method {} needs P_meta weights; pass --weights W.safetensors",
                self.name()
            )));
        }
        if self.needs_attention() && !has_attention {
            return Err(Error::InvalidArgument(format!(
                "method {} needs the vision tower's [CLS] attention over the tokens; add a \
                 tensor `attention` (n, or b x n, non-negative) to the input file",
                self.name()
            )));
        }
        Ok(())
    }
}

/// Whether the method compares tokens (float64 similarities of its candidates).
fn compares_tokens(method: Method) -> bool {
    matches!(
        method,
        Method::Tome | Method::DivPrune | Method::VisionZip | Method::PruMerge
    )
}

/// Refuses `method`'s similarities of `candidates` tokens when they would not fit in memory.
fn check_similarities(method: Method, candidates: usize) -> Result<()> {
    if compares_tokens(method) {
        host_bytes(
            &format!("{}'s token similarities", method.name()),
            &[candidates, candidates],
            8,
        )?;
    }
    Ok(())
}

/// The rows of one grid under a method that needs no weights.
fn grid_rows(
    method: Method,
    image: &[f32],
    width: usize,
    attention: Option<&[f32]>,
    query_grid: &QueryGrid,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<Row>> {
    let attention = || {
        attention.ok_or_else(|| {
            method
                .check_inputs(true, false)
                .expect_err("the method needs attention")
        })
    };
    check_similarities(method, query_grid.grid.len())?;
    Ok(match method {
        Method::MetaCompress => {
            return Err(Error::InvalidArgument(
                "metacompress builds P from its weights: use Compressor".to_string(),
            ))
        }
        Method::Pool => grid::pool(query_grid),
        Method::Sample => grid::sample_rows(query_grid),
        Method::Random => grid::random(query_grid, rng),
        Method::Tome => tome::tome(image, width, query_grid),
        Method::DivPrune => divprune::divprune(image, width, query_grid),
        Method::VisionZip => attention::visionzip(image, width, attention()?, query_grid),
        Method::PruMerge => attention::prumerge(image, width, attention()?, query_grid),
    })
}

/// The host memory one run of a method takes, worked out from the shapes before it starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Footprint {
    /// Bytes handed back and held by the caller: `Y`, and `P` where the run returns it.
    pub held: u64,
    /// Bytes the run holds only while it runs: the f32 copy of `X` and the similarities the
    /// methods that compare tokens build.
    pub transient: u64,
}

impl Footprint {
    /// The most the run holds at once.
    pub fn peak(&self) -> u64 {
        self.held.saturating_add(self.transient)
    }
}

/// What `method` will hold on `b` images of `n` tokens of width `d` with `queries`, asked
/// for `scope` (`save_projection`: whether `metacompress` hands back its `P`; the others
/// always do).
pub fn footprint(
    method: Method,
    scope: Scope,
    (b, n, d): (usize, usize, usize),
    queries: &Queries,
    save_projection: bool,
) -> Footprint {
    let bytes = |dims: &[usize], size: u64| {
        dims.iter()
            .fold(size, |bytes, &dim| bytes.saturating_mul(dim as u64))
    };
    let m = queries.count;
    let tokens = bytes(&[b, m, d], 4);
    let projection = bytes(&[b, m, n], 4);
    if method == Method::MetaCompress {
        // The forward pass's own buffers are bounded by its blocks.
        let held = if save_projection {
            tokens.saturating_add(projection)
        } else {
            tokens
        };
        return Footprint { held, transient: 0 };
    }
    let copy = bytes(&[b, n, d], 4);
    // One set of candidates at a time (a grid, or the whole image at scope image): its
    // float64 similarities and unit-length tokens.
    let similarities = if !compares_tokens(method) {
        0
    } else if method.scope(scope) == Scope::Image {
        bytes(&[n, n], 8).saturating_add(bytes(&[n, d], 8))
    } else {
        queries
            .grids
            .iter()
            .map(|query_grid| {
                let tokens = query_grid.grid.len();
                bytes(&[tokens, tokens], 8).saturating_add(bytes(&[tokens, d], 8))
            })
            .max()
            .unwrap_or(0)
    };
    Footprint {
        held: tokens.saturating_add(projection),
        transient: copy.saturating_add(similarities),
    }
}

/// Refuses a run that would hold more than the host budget at its peak, naming `what`.
pub fn check_footprint(what: &str, peak: u64) -> Result<()> {
    if peak > HOST_BUDGET {
        return Err(Error::TooLarge(format!(
            "{what} would hold {:.1} GiB of host memory at its peak; the limit is {} GiB \
             (pass a smaller --keep, fewer tokens or smaller grids)",
            peak as f64 / (1u64 << 30) as f64,
            HOST_BUDGET >> 30
        )));
    }
    Ok(())
}

/// `P` (`m x n`, row-major) of one image (`n x width`) under a method that needs no weights,
/// asked for `scope` (the method runs at `method.scope(scope)`); `attention` is the image's
/// (`n`) where the method reads it; `rng` draws `random`'s subsets.
pub fn projection(
    method: Method,
    scope: Scope,
    image: &[f32],
    width: usize,
    attention: Option<&[f32]>,
    queries: &Queries,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<f32>> {
    let n = image.len() / width;
    host_bytes(&format!("{}'s P", method.name()), &[queries.count, n], 4)?;
    let mut p = vec![0.0f32; queries.count * n];
    // At scope image: the same m rows, chosen among all n tokens (SPEC section 4, v4).
    let image_rows = match (method, method.scope(scope)) {
        (Method::DivPrune, Scope::Image) => {
            check_similarities(method, n)?;
            Some(divprune::divprune_image(image, width, queries.count))
        }
        (Method::Random, Scope::Image) => Some(grid::random_image(n, queries.count, rng)),
        _ => None,
    };
    if let Some(rows) = image_rows {
        debug_assert_eq!(rows.len(), queries.count);
        for (index, row) in rows.into_iter().enumerate() {
            for (token, weight) in row {
                p[index * n + token] = weight;
            }
        }
        return Ok(p);
    }
    for query_grid in &queries.grids {
        let rows = grid_rows(method, image, width, attention, query_grid, rng)?;
        debug_assert_eq!(rows.len(), query_grid.len());
        for (index, row) in rows.into_iter().enumerate() {
            let out = &mut p[(query_grid.query_offset + index) * n..][..n];
            for (token, weight) in row {
                out[token] = weight;
            }
        }
    }
    Ok(p)
}

/// What `Y = P X` runs on: the float64 reference, the CPU path, or a GPU.
pub enum Reducer {
    /// Float64 accumulation.
    Reference,
    /// f32 through the CPU path's cache-blocked product.
    Cpu,
    /// The forward pass's reduction kernel.
    Gpu(Box<GpuReduction>),
}

impl Reducer {
    /// Where `compressor` runs (on its device when it has one).
    pub fn beside(compressor: &Compressor) -> Result<Self> {
        Ok(match compressor.context() {
            Some(context) => Reducer::Gpu(Box::new(GpuReduction::new(
                context.clone(),
                compressor.precision(),
            )?)),
            None if compressor.is_reference() => Reducer::Reference,
            None => Reducer::Cpu,
        })
    }

    /// Opens `backend` as `Compressor::new` does; with `Backend::Auto`, also why it chose.
    pub fn open(
        backend: Backend,
        adapter: Option<&str>,
        precision: Precision,
    ) -> Result<(Self, Option<String>)> {
        let (opened, choice) = open_backend(backend, adapter, precision)?;
        let reducer = match opened {
            Opened::Reference => Reducer::Reference,
            Opened::Cpu => Reducer::Cpu,
            Opened::Gpu(context) => Reducer::Gpu(Box::new(GpuReduction::new(*context, precision)?)),
        };
        Ok((reducer, choice))
    }

    /// `Y` (`b x m x d`) for `projection` (`b x m x n`); on the GPU, `options.poison` starts
    /// the outputs as NaN and `options.max_binding_bytes` can force smaller chunks.
    pub fn reduce(
        &self,
        features: &Features,
        projection: &[f32],
        options: &Options,
    ) -> Result<Vec<f32>> {
        let (b, n, d) = (features.batch(), features.tokens(), features.width());
        let m = projection.len() / (b * n);
        match self {
            Reducer::Gpu(gpu) => gpu.reduce(features, projection, options),
            Reducer::Reference => {
                let p: Vec<f64> = projection.iter().map(|&v| v as f64).collect();
                Ok((0..b)
                    .flat_map(|image| {
                        reference::reduce(&p[image * m * n..][..m * n], features.image(image), n, d)
                    })
                    .map(|v| v as f32)
                    .collect())
            }
            Reducer::Cpu => {
                use crate::products::{product, View};
                let mut tokens = vec![0.0f32; b * m * d];
                for image in 0..b {
                    product(
                        View::row_major(&projection[image * m * n..][..m * n], m, n),
                        View::row_major(features.image(image), n, d),
                        &mut tokens[image * m * d..][..m * d],
                    );
                }
                Ok(tokens)
            }
        }
    }
}

/// The inputs of a method run: features sharing one layout, and what some methods read.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// The images, `b x n x d` (f32, f16 or bf16, borrowed).
    pub features: HostTokens<'a>,
    /// Their layout.
    pub layout: &'a Layout,
    /// The vision tower's attention over the tokens, `b x n` (checked by `check_attention`).
    pub attention: Option<&'a [f32]>,
    /// Seed of `random`'s draws.
    pub seed: u64,
}

/// Runs any method: a `Compressor` for `metacompress` (when weights were given) and a
/// `Reducer` for the others, on the same device.
pub struct Runner {
    compressor: Option<Compressor>,
    reducer: Reducer,
    choice: Option<String>,
}

impl Runner {
    /// Opens `backend`; with `weights`, `metacompress` can run too.
    pub fn new(
        weights: Option<PMeta>,
        backend: Backend,
        adapter: Option<&str>,
        precision: Precision,
    ) -> Result<Self> {
        match weights {
            Some(weights) => {
                let compressor = Compressor::new(weights, backend, adapter, precision)?;
                let reducer = Reducer::beside(&compressor)?;
                let choice = compressor.choice().map(str::to_string);
                Ok(Runner {
                    compressor: Some(compressor),
                    reducer,
                    choice,
                })
            }
            None => {
                let (reducer, choice) = Reducer::open(backend, adapter, precision)?;
                Ok(Runner {
                    compressor: None,
                    reducer,
                    choice,
                })
            }
        }
    }

    /// Runs on a device already open (with `weights`, `metacompress` too).
    pub fn on_context(
        weights: Option<PMeta>,
        context: GpuContext,
        precision: Precision,
    ) -> Result<Self> {
        let compressor = match weights {
            Some(weights) => Some(Compressor::on_context(weights, context.clone(), precision)?),
            None => None,
        };
        Ok(Runner {
            compressor,
            reducer: Reducer::Gpu(Box::new(GpuReduction::new(context, precision)?)),
            choice: None,
        })
    }

    /// Why `Backend::Auto` chose what it chose, if it was asked to choose.
    pub fn choice(&self) -> Option<&str> {
        self.choice.as_deref()
    }

    /// What runs `Y = P X`, for people.
    pub fn device(&self) -> String {
        match (&self.compressor, &self.reducer) {
            (Some(compressor), _) => compressor.device(),
            (None, Reducer::Gpu(gpu)) => gpu.context().describe(gpu.precision()),
            (None, Reducer::Reference) => REFERENCE_DEVICE.to_string(),
            (None, Reducer::Cpu) => cpu_device(crate::options::Precision::F32),
        }
    }

    /// Whether the runner holds P_meta weights (what `metacompress` needs).
    pub fn has_weights(&self) -> bool {
        self.compressor.is_some()
    }

    /// Whether `method` can run on this runner and `request` (`Ok`), or what is missing.
    pub fn check(&self, method: Method, request: &Request) -> Result<()> {
        method.check_inputs(self.compressor.is_some(), request.attention.is_some())
    }

    /// Runs `method` on every image of `request`: `Y`, the queries and `P` (always for the
    /// other methods; for `metacompress` only with `options.save_projection`).
    /// `options` gives the keep, the scope (`method.scope(options.scope)` is the one used),
    /// `poison` and `max_binding_bytes`, and for `metacompress` the kernels.
    pub fn run(&self, method: Method, request: &Request, options: &Options) -> Result<Compressed> {
        self.check(method, request)?;
        let features = request.features;
        let (b, n, d) = (features.batch(), features.tokens(), features.width());
        request.layout.check_tokens(n)?;
        if let Some(attention) = request.attention {
            check_attention(attention, &[b, n])?;
        }
        let queries = request.layout.queries(options.keep);
        // The whole run's memory, before any of it is taken.
        let needed = footprint(
            method,
            options.scope,
            (b, n, d),
            &queries,
            options.save_projection,
        );
        check_footprint(&format!("method {}", method.name()), needed.peak())?;
        if method == Method::MetaCompress {
            // P only when asked for: the forward pass never holds the whole of it otherwise.
            let compressor = self.compressor.as_ref().expect("checked above");
            return compressor.compress_tokens(Tokens::Host(features), request.layout, options);
        }
        host_bytes(&format!("{}'s P", method.name()), &[b, queries.count, n], 4)?;
        // The other methods compute on an f32 copy.
        let features = &features.to_features();
        let mut rng = ChaCha8Rng::seed_from_u64(request.seed);
        let mut p = Vec::with_capacity(b * queries.count * n);
        for image in 0..b {
            let attention = request.attention.map(|a| &a[image * n..][..n]);
            p.extend(projection(
                method,
                options.scope,
                features.image(image),
                d,
                attention,
                &queries,
                &mut rng,
            )?);
        }
        let tokens = self.reducer.reduce(features, &p, options)?;
        check_computed("the reduced tokens", &tokens)?;
        Ok(Compressed {
            tokens,
            projection: Some(p),
            batch: b,
            input_tokens: n,
            width: d,
            queries,
            profile: None,
        })
    }

    /// Runs `method` on `request` and applies the same `P` to every set of `extra` tokens:
    /// `Y_k = P X_k` (one `P`, several products), as a model that hands the language model
    /// several token sets per image needs (Qwen3-VL's deepstack features, which the language
    /// model adds at the image tokens of its first layers). Each extra set holds the same
    /// images and tokens as `request.features` (`b x n`, any width `d_k`); its reduced tokens
    /// come back in order, `b x m x d_k` each, reduced where the main ones are (reference,
    /// CPU path or GPU). `P` is kept in the result only with `options.save_projection` (the
    /// other methods always keep it).
    pub fn run_sharing(
        &self,
        method: Method,
        request: &Request,
        extra: &[HostTokens],
        options: &Options,
    ) -> Result<Shared> {
        let (b, n) = (request.features.batch(), request.features.tokens());
        for (index, set) in extra.iter().enumerate() {
            if (set.batch(), set.tokens()) != (b, n) {
                return Err(Error::InvalidArgument(format!(
                    "extra token set {index} holds {} x {} tokens; expected the main tokens' \
                     {b} x {n} (one P is applied to every set)",
                    set.batch(),
                    set.tokens()
                )));
            }
        }
        let queries = request.layout.queries(options.keep);
        let mut peak = footprint(
            method,
            options.scope,
            (b, n, request.features.width()),
            &queries,
            true,
        )
        .peak();
        for set in extra {
            // Each set's f32 copy and reduced tokens.
            let copy = (b * n * set.width()) as u64 * 4;
            let reduced = (b * queries.count * set.width()) as u64 * 4;
            peak = peak.saturating_add(copy.saturating_add(reduced));
        }
        check_footprint(
            &format!("method {} with {} extra sets", method.name(), extra.len()),
            peak,
        )?;
        let with_projection = Options {
            save_projection: true,
            ..*options
        };
        let mut main = self.run(method, request, &with_projection)?;
        let projection = main.projection.as_ref().expect("asked for");
        let mut reduced = Vec::with_capacity(extra.len());
        for set in extra {
            let tokens = self
                .reducer
                .reduce(&set.to_features(), projection, options)?;
            check_computed("the reduced extra tokens", &tokens)?;
            reduced.push(tokens);
        }
        if method == Method::MetaCompress && !options.save_projection {
            main.projection = None;
        }
        Ok(Shared {
            main,
            extra: reduced,
        })
    }
}

/// What `Runner::run_sharing` hands back: the main result and each extra set's `P X_k`.
#[derive(Clone, Debug)]
pub struct Shared {
    /// The main tokens' result (`Y`, the queries, `P` where kept).
    pub main: Compressed,
    /// `P X_k` for each extra set, `b x m x d_k`, in the order given.
    pub extra: Vec<Vec<f32>>,
}

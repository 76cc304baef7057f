//! The command line's flags and subcommands (SPEC section 6), as clap reads them.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use metacompress::methods::Method;
use metacompress::{Backend, Dtype, Precision, Scope, SplitK};

#[derive(Parser)]
#[command(
    name = "metacompress",
    version,
    about = "Learned visual-token compression (MetaCompress) for vision-language models, on any GPU"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
    /// Threads of the CPU path, 1 to 1024 [default: one per logical CPU] (the same as
    /// RAYON_NUM_THREADS).
    #[arg(long, global = true, value_name = "N")]
    pub(crate) threads: Option<usize>,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Compress the visual tokens of an input file (P_meta weights, or a baseline method).
    Compress(CompressArgs),
    /// Run every applicable method on the same features; print fidelity figures.
    Compare(CompareArgs),
    /// Write the paper's training-free initialisation of P_meta.
    Init(InitArgs),
    /// List every adapter wgpu sees.
    Devices,
    /// Time the forward pass on named workloads, per kernel, tuned against naive.
    Bench(BenchArgs),
    /// Print the grids of a layout preset (as --grid flags, or JSON) and its token count.
    Layout {
        /// llava-1.5, llava-next:WIDTHxHEIGHT or llava-onevision:WIDTHxHEIGHT (the image's
        /// pixels), llava-onevision-video:FRAMES, qwen2-vl:TxHxW, qwen2.5-vl:TxHxW or
        /// qwen3-vl:TxHxW (grid_thw).
        preset: String,
        /// The model's image_grid_pinpoints (llava-next, llava-onevision), a JSON list of
        /// [height, width] pairs [default: LLaVA-NeXT's
        /// [[336,672],[672,336],[672,672],[1008,336],[336,1008]]; LLaVA-OneVision's 1x1 to 6x6
        /// tiles of 384].
        #[arg(long, value_name = "JSON")]
        pinpoints: Option<String>,
        /// Print exactly {"n": N, "grids": [[offset, h, w, stride], ...]}.
        #[arg(long)]
        json: bool,
    },
    /// Run the whole path on built-in data, with no files and no flags.
    Demo {
        /// Where to run (by default a real GPU, else the CPU path).
        #[arg(long, value_enum, default_value_t = Backend::Auto)]
        backend: Backend,
        /// Also write the demo's features (with a stand-in attention tensor) and weights
        /// into DIR, for `compress` and `compare`.
        #[arg(long, value_name = "DIR")]
        save: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
pub(crate) struct CompressArgs {
    /// P_meta weights (safetensors: w_q, w_k, omega, optional pos_embed); needed by
    /// --method metacompress.
    #[arg(long)]
    pub(crate) weights: Option<PathBuf>,
    /// The reduction method (all produce a P and use the same P X kernels).
    #[arg(long, value_enum, default_value_t = Method::MetaCompress)]
    pub(crate) method: Method,
    /// Seed of --method random.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Input features (safetensors: features, n x d or b x n x d).
    #[arg(long)]
    pub(crate) input: PathBuf,
    /// Output file (safetensors: tokens, and projection with --save-projection).
    #[arg(long)]
    pub(crate) output: PathBuf,
    /// Fraction of tokens to keep, in (0, 1] [default: 0.1].
    #[arg(long, conflicts_with = "reduction", allow_negative_numbers = true)]
    pub(crate) keep: Option<f64>,
    /// Fraction of tokens to remove: keep = 1 - R.
    #[arg(long, allow_negative_numbers = true)]
    pub(crate) reduction: Option<f64>,
    #[command(flatten)]
    pub(crate) layout: LayoutArgs,
    /// Which keys each query's softmax runs over.
    #[arg(long, value_enum, default_value_t = Scope::Image)]
    pub(crate) scope: Scope,
    #[command(flatten)]
    pub(crate) device: DeviceArgs,
    /// Also write the compression projection P (f32).
    #[arg(long)]
    pub(crate) save_projection: bool,
    /// Dtype of the output tokens [default: the input's].
    #[arg(long, value_enum)]
    pub(crate) output_dtype: Option<Dtype>,
}

/// Where and in what precision a command runs.
#[derive(clap::Args)]
pub(crate) struct DeviceArgs {
    /// Storage precision: f32, f16 or f16-acc on a GPU; f32 or bf16 on the CPU path.
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub(crate) precision: Precision,
    /// Where to run.
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    pub(crate) backend: Backend,
    /// Use the adapter whose name contains NAME (any case).
    #[arg(long, value_name = "NAME")]
    pub(crate) adapter: Option<String>,
    /// Split-K on the GPU: auto (cut skinny products on hardware adapters, never on
    /// software ones), off, or a piece count.
    #[arg(long, default_value = "auto", value_name = "auto|off|N")]
    pub(crate) split_k: SplitK,
}

#[derive(clap::Args)]
pub(crate) struct CompareArgs {
    /// Input features (safetensors: features, optional attention and grids metadata).
    #[arg(long)]
    pub(crate) input: PathBuf,
    /// P_meta weights; without them metacompress is skipped.
    #[arg(long)]
    pub(crate) weights: Option<PathBuf>,
    /// Fraction of tokens to keep, in (0, 1].
    #[arg(long, default_value_t = 0.1, allow_negative_numbers = true)]
    pub(crate) keep: f64,
    #[command(flatten)]
    pub(crate) layout: LayoutArgs,
    /// Probe queries (safetensors: probes, q x d) [default: 64 drawn from the features'
    /// per-channel mean and deviation].
    #[arg(long, value_name = "Q.safetensors")]
    pub(crate) probes: Option<PathBuf>,
    /// Seed of the random method and of the drawn probes.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Which keys metacompress's softmax runs over.
    #[arg(long, value_enum, default_value_t = Scope::Image)]
    pub(crate) scope: Scope,
    #[command(flatten)]
    pub(crate) device: DeviceArgs,
    /// Also write the report as JSON to PATH.
    #[arg(long, value_name = "PATH")]
    pub(crate) json: Option<PathBuf>,
    /// Write pictures of each method's P (first image) into DIR.
    #[arg(long, value_name = "DIR")]
    pub(crate) png: Option<PathBuf>,
    /// Pixels per token in the pictures.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub(crate) png_scale: u16,
}

#[derive(clap::Args)]
pub(crate) struct BenchArgs {
    /// A workload (llava15-7b, llava15-13b, llava-next-7b, llava-next-7b-photo, qwen2vl-7b,
    /// qwen2vl-7b-video, qwen2vl-7b-video-8f, qwen2vl-7b-video-12f, tiny) or all.
    #[arg(long, default_value = "llava15-7b", value_name = "NAME|all")]
    pub(crate) workload: String,
    /// Fraction of tokens to keep, in (0, 1].
    #[arg(long, default_value_t = 0.1, allow_negative_numbers = true)]
    pub(crate) keep: f64,
    /// Projection width d_c of the weights [default: 256, or d when smaller].
    #[arg(long)]
    pub(crate) dc: Option<usize>,
    /// Storage precision: f32, f16 or f16-acc on a GPU; f32 or bf16 on the CPU path.
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub(crate) precision: Precision,
    /// Where to run: auto is the best GPU adapter (software ones included); cpu the CPU path.
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    pub(crate) backend: Backend,
    /// Use the adapter whose name contains NAME (any case).
    #[arg(long, value_name = "NAME")]
    pub(crate) adapter: Option<String>,
    /// Timed runs per variant.
    #[arg(long, default_value_t = 20)]
    pub(crate) runs: usize,
    /// Untimed runs before them.
    #[arg(long, default_value_t = 2)]
    pub(crate) warmup: usize,
    /// Leave out the naive kernels.
    #[arg(long)]
    pub(crate) skip_naive: bool,
    /// Also time the shared-memory (workgroup-tiled) kernels.
    #[arg(long)]
    pub(crate) shared: bool,
    /// Split-K policies for the tuned and shared kernels, each timed as a variant of its own:
    /// auto (cut skinny products on hardware adapters, never on software ones), off, or a
    /// piece count; several separated by commas, e.g. auto,off.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "auto",
        value_name = "auto|off|N"
    )]
    pub(crate) split_k: Vec<SplitK>,
    /// Images per call (batches past one storage binding run in chunks).
    #[arg(long, default_value_t = 1)]
    pub(crate) batch: usize,
    /// Also write the report as JSON to PATH.
    #[arg(long, value_name = "PATH")]
    pub(crate) json: Option<PathBuf>,
}

#[derive(clap::Args)]
pub(crate) struct InitArgs {
    /// Token width d.
    #[arg(long)]
    pub(crate) dim: usize,
    /// Projection width d_c (at most d).
    #[arg(long)]
    pub(crate) dc: usize,
    /// Add a 2-D sine-cosine position table of GHxGW cells.
    #[arg(long, value_name = "GHxGW")]
    pub(crate) pos: Option<String>,
    /// Scale of the position table.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub(crate) pos_scale: f32,
    /// Seed of the random orthonormal projection.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Output weights file.
    #[arg(long)]
    pub(crate) output: PathBuf,
}

/// Where the grids are: `--grid` flags, a `--layout` preset, or the input's `grids`
/// metadata (else one square grid).
#[derive(clap::Args)]
pub(crate) struct LayoutArgs {
    /// A grid of the layout, HxW[@OFFSET][/STRIDE] (repeatable); overrides the file's
    /// `grids`. A missing offset follows the previous grid; a missing stride is W.
    #[arg(long = "grid", value_name = "HxW[@OFFSET][/STRIDE]")]
    pub(crate) grids: Vec<String>,
    /// A layout preset computed as the model does: llava-1.5, llava-next:WIDTHxHEIGHT or
    /// llava-onevision:WIDTHxHEIGHT (the image's pixels), llava-onevision-video:FRAMES,
    /// qwen2-vl:TxHxW, qwen2.5-vl:TxHxW or qwen3-vl:TxHxW (grid_thw); overrides the file's
    /// `grids`.
    #[arg(long, value_name = "PRESET", conflicts_with = "grids")]
    pub(crate) layout: Option<String>,
    /// With --layout llava-next or llava-onevision: the model's image_grid_pinpoints, a JSON
    /// list of [height, width] pairs.
    #[arg(long, value_name = "JSON", requires = "layout")]
    pub(crate) pinpoints: Option<String>,
}

//! The benchmark harness behind `metacompress bench` and `cargo bench`: named workloads,
//! warm-up and timed runs of the tuned and naive kernels, medians and spreads per step, and
//! the report as a table and as JSON.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use serde_json::{json, Value};

mod workloads;

pub use workloads::{workloads, Workload, TINY, WORKLOADS};

use crate::backend::open_backend;
use crate::compress::Compressor;
use crate::error::{Error, Result};
use crate::gpu::resident::Tokens;
use crate::gpu::{AdapterReport, GpuContext};
use crate::layout::Keep;
use crate::options::{Backend, KernelVariant, Options, Precision, SplitK};
use crate::profile::Profile;
use crate::tensor::{Features, HostTokens};
use crate::weights::PMeta;

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// Keep fraction.
    pub keep: Keep,
    /// Projection width `d_c` (default 256, or `d` when a workload is narrower).
    pub channels: Option<usize>,
    /// Storage precision on the GPU.
    pub precision: Precision,
    /// `Auto`: the best GPU adapter, software ones included (the GPU path is what is being
    /// measured); `Cpu`: the CPU path; otherwise that API.
    pub backend: Backend,
    /// An adapter by name.
    pub adapter: Option<String>,
    /// Timed runs per variant (after the warm-up).
    pub runs: usize,
    /// Untimed runs first.
    pub warmup: usize,
    /// Whether to run the naive kernels too (GPU only).
    pub naive: bool,
    /// Whether to run the shared-memory kernels too (GPU only).
    pub shared: bool,
    /// Split-K policies the tuned and shared kernels run under, each a variant of its own
    /// (GPU only; the naive kernels never split).
    pub split_k: Vec<SplitK>,
    /// Images per call (the same random image repeated; batches past one storage binding
    /// run in chunks).
    pub batch: usize,
}

/// Median and range of a set of timings, in seconds.
#[derive(Clone, Copy, Debug)]
pub struct Spread {
    /// The median.
    pub median: f64,
    /// The fastest.
    pub min: f64,
    /// The slowest.
    pub max: f64,
}

impl Spread {
    fn of(values: &[f64]) -> Self {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let count = sorted.len();
        let median = if count % 2 == 1 {
            sorted[count / 2]
        } else {
            (sorted[count / 2 - 1] + sorted[count / 2]) / 2.0
        };
        Spread {
            median,
            min: sorted[0],
            max: sorted[count - 1],
        }
    }

    fn json(&self) -> Value {
        json!({ "median_ms": self.median * 1e3, "min_ms": self.min * 1e3, "max_ms": self.max * 1e3 })
    }
}

/// One step (or the total) of one variant.
#[derive(Clone, Debug)]
pub struct StepReport {
    /// The step's name (`total` for the sum of the steps).
    pub name: String,
    /// Floating-point operations its shapes imply.
    pub flops: f64,
    /// The fewest bytes it must move.
    pub bytes: f64,
    /// Its time over the timed runs.
    pub time: Spread,
    /// Its median's share of the sum of the steps' medians (1 for the total).
    pub share: f64,
}

impl StepReport {
    /// GFLOP/s at the median time.
    pub fn gflops(&self) -> f64 {
        self.flops / self.time.median / 1e9
    }

    /// GB/s at the median time.
    pub fn gbytes(&self) -> f64 {
        self.bytes / self.time.median / 1e9
    }

    fn json(&self) -> Value {
        json!({
            "name": self.name,
            "flops": self.flops,
            "bytes": self.bytes,
            "time": self.time.json(),
            "gflops_per_s": self.gflops(),
            "gbytes_per_s": self.gbytes(),
            "share": self.share,
        })
    }
}

/// The timings of one kernel variant on one workload.
#[derive(Clone, Debug)]
pub struct VariantReport {
    /// `tuned`, `naive` or `cpu`.
    pub variant: &'static str,
    /// Which association the scores took (`keys` or `tokens`).
    pub association: &'static str,
    /// The split-K policy it ran under (`auto` resolved for the adapter; empty on the CPU).
    pub split_k: String,
    /// Where the times come from.
    pub clock: &'static str,
    /// Each step.
    pub steps: Vec<StepReport>,
    /// The sum of the steps.
    pub total: StepReport,
    /// Host time of the whole call (upload, steps, read-back).
    pub call: Spread,
}

/// One workload's results.
#[derive(Clone, Debug)]
pub struct WorkloadReport {
    /// The workload.
    pub workload: Workload,
    /// Projection width `d_c`.
    pub channels: usize,
    /// Queries per image.
    pub queries: usize,
    /// GPU memory the compressor holds (its weights) and what one tuned call allocates, in
    /// bytes (both 0 on the CPU path).
    pub memory: (u64, u64),
    /// Each variant that ran, the tuned (or CPU) one first.
    pub variants: Vec<VariantReport>,
    /// On the CPU path where oneDNN opens: oneDNN's matmul rate (GFLOP/s) on the forward's two
    /// large products, `Y = P X` (`m x n x d`) and `K = X w_k` (`n x d x d_c`), plain row-major
    /// operands, in the run's precision (bf16 x bf16 -> f32 under bf16); the better of a
    /// measure before and one after the workload's runs.
    pub onednn_rate: Option<f64>,
}

impl WorkloadReport {
    /// How many times faster the first variant's total is than the naive one's (medians).
    pub fn speedup(&self) -> Option<f64> {
        let naive = self.variants.iter().find(|v| v.variant == "naive")?;
        Some(naive.total.time.median / self.variants[0].total.time.median)
    }
}

/// A whole benchmark.
#[derive(Clone, Debug)]
pub struct BenchReport {
    /// The adapter, or `None` for the CPU path.
    pub adapter: Option<AdapterReport>,
    /// What ran, for people.
    pub device: String,
    /// The configuration.
    pub config: BenchConfig,
    /// Seconds since 1970 when the benchmark finished.
    pub unix_time: u64,
    /// One entry per workload.
    pub workloads: Vec<WorkloadReport>,
    /// On the CPU path: the rate of this library's f32 product on a square product, the
    /// better of a measure before and one after the workloads (GFLOP/s).
    pub cpu_peak: Option<f64>,
}

/// Side of the square product `cpu_peak` times.
pub const PEAK_SIZE: usize = 2048;

/// The best rate (GFLOP/s) of three `PEAK_SIZE`-square f32 products through the CPU path's
/// product (after one untimed), on random values.
pub fn cpu_peak() -> f64 {
    use crate::products::{product, View};
    let size = PEAK_SIZE;
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let a: Vec<f32> = (0..size * size)
        .map(|_| rng.sample(StandardNormal))
        .collect();
    let b: Vec<f32> = (0..size * size)
        .map(|_| rng.sample(StandardNormal))
        .collect();
    let mut out = vec![0.0f32; size * size];
    let mut best = f64::INFINITY;
    for run in 0..4 {
        let started = std::time::Instant::now();
        product(
            View::row_major(&a, size, size),
            View::row_major(&b, size, size),
            &mut out,
        );
        if run > 0 {
            best = best.min(started.elapsed().as_secs_f64());
        }
    }
    2.0 * (size as f64).powi(3) / best / 1e9
}

/// Opens the device `config` names (the CPU path for `Backend::Cpu`): the context, if any.
fn open(config: &BenchConfig) -> Result<Option<GpuContext>> {
    match config.backend {
        Backend::Cpu => {
            // The CPU path's own checks (precision, kernel level), before any timing.
            open_backend(Backend::Cpu, None, config.precision)?;
            Ok(None)
        }
        Backend::Reference => Err(Error::InvalidArgument(
            "--backend reference is the float64 yardstick for tests, not a path to benchmark; \
             expected auto, vulkan, metal, dx12, gl or cpu"
                .to_string(),
        )),
        backend => {
            let api = backend.api().expect("GPU backends have an API");
            GpuContext::open(api, config.adapter.as_deref()).map(Some)
        }
    }
}

/// Most timed (or warm-up) runs one variant may take.
pub const MOST_RUNS: usize = 100_000;

/// Runs `config` over `workloads`, calling `progress` with a line before each timed batch.
pub fn run(
    config: &BenchConfig,
    workloads: &[Workload],
    mut progress: impl FnMut(&str),
) -> Result<BenchReport> {
    if config.batch == 0 {
        return Err(Error::InvalidArgument(
            "--batch 0 compresses nothing; expected at least 1".to_string(),
        ));
    }
    if config.runs == 0 || config.runs > MOST_RUNS {
        return Err(Error::InvalidArgument(format!(
            "--runs {} is out of range; expected 1 to {MOST_RUNS} (20 or more for a report)",
            config.runs
        )));
    }
    if config.warmup > MOST_RUNS {
        return Err(Error::InvalidArgument(format!(
            "--warmup {} is out of range; expected 0 to {MOST_RUNS}",
            config.warmup
        )));
    }
    for workload in workloads {
        crate::tensor::host_bytes(
            &format!("--batch {} of workload {}", config.batch, workload.name),
            &[config.batch, workload.tokens, workload.width],
            4,
        )?;
    }
    let context = open(config)?;
    let peak_before = context.is_none().then(|| {
        progress("measuring the CPU's f32 product rate");
        cpu_peak()
    });
    let mut reports = Vec::new();
    let mut device = crate::cpu::cpu_device(config.precision);
    for workload in workloads {
        let layout = workload.layout()?;
        let channels = config.channels.unwrap_or(256.min(workload.width));
        if channels == 0 || channels > workload.width {
            return Err(Error::InvalidArgument(format!(
                "--dc {channels} does not fit workload {} (d = {}); expected 1 to d",
                workload.name, workload.width
            )));
        }
        let weights = PMeta::init(workload.width, channels, Some((24, 24)), 1.0, 0)?;
        let mut rng = ChaCha8Rng::seed_from_u64(2026);
        let values = (0..workload.tokens * workload.width)
            .map(|_| rng.sample::<f32, _>(StandardNormal))
            .collect();
        let values: Vec<f32> = values;
        let features = Features::new(
            config.batch,
            workload.tokens,
            workload.width,
            values.repeat(config.batch),
        )?;
        let compressor = match &context {
            Some(context) => Compressor::on_context(weights, context.clone(), config.precision)?,
            None => Compressor::new(weights, Backend::Cpu, None, config.precision)?,
        };
        device = compressor.device();
        // Under --precision bf16 the tokens arrive as bf16, as a model's vision tower hands
        // them over.
        let bf16_features: Option<Vec<half::bf16>> =
            (context.is_none() && config.precision == Precision::Bf16).then(|| {
                features
                    .values()
                    .iter()
                    .map(|&v| half::bf16::from_f32(v))
                    .collect()
            });
        let bf16_tokens = bf16_features
            .as_deref()
            .map(|values| HostTokens::new(values, config.batch, workload.tokens, workload.width))
            .transpose()?;
        let m = layout.queries(config.keep).count;
        // The naive kernels exist on the GPU only.
        let policies = match &context {
            Some(_) if !config.split_k.is_empty() => config.split_k.clone(),
            _ => vec![SplitK::Off],
        };
        let mut variants: Vec<(KernelVariant, SplitK)> = Vec::new();
        for kernels in [KernelVariant::Tuned, KernelVariant::Shared] {
            if kernels == KernelVariant::Shared && (context.is_none() || !config.shared) {
                continue;
            }
            variants.extend(policies.iter().map(|&policy| (kernels, policy)));
        }
        if context.is_some() && config.naive {
            variants.push((KernelVariant::Naive, SplitK::Off));
        }
        // oneDNN's rate on this workload's own two large products, the yardstick of the
        // CPU path (measured before and after its runs, the better kept).
        let large_products = [
            (m, workload.tokens, workload.width),
            (workload.tokens, workload.width, channels),
        ];
        let onednn_bf16 = config.precision == Precision::Bf16;
        let onednn_before = if context.is_none() && crate::products::onednn_loads() {
            progress(&format!(
                "{}: measuring oneDNN's matmul on the forward's two large products",
                workload.name
            ));
            crate::products::onednn_rate(&large_products, onednn_bf16)
        } else {
            None
        };
        let mut variant_reports = Vec::new();
        for (kernels, split_k) in variants {
            let name = match (&context, kernels) {
                (None, _) => "cpu",
                (Some(_), variant) => variant.name(),
            };
            progress(&format!(
                "{}: {name}, {} warm-up + {} timed runs",
                workload.name, config.warmup, config.runs
            ));
            let options = Options {
                keep: config.keep,
                kernels,
                profile: true,
                split_k,
                ..Options::default()
            };
            let split_name = match &context {
                None => String::new(),
                Some(context) => match split_k.resolve(context.is_software()) {
                    SplitK::Off if split_k == SplitK::Auto => "off (auto: software adapter)".into(),
                    resolved => resolved.name(),
                },
            };
            let mut profiles = Vec::new();
            for run in 0..config.warmup + config.runs {
                let out = match bf16_tokens {
                    Some(tokens) => {
                        compressor.compress_tokens(Tokens::Host(tokens), &layout, &options)?
                    }
                    None => compressor.compress(&features, &layout, &options)?,
                };
                if run >= config.warmup {
                    let profile = out.profile.ok_or_else(|| {
                        Error::Unsupported("this backend does not report timings".to_string())
                    })?;
                    profiles.push(profile.merged());
                }
            }
            let association = options
                .association
                .resolve(kernels, workload.tokens, m, workload.width, channels)
                .name();
            let mut report = summarise(name, association, &profiles);
            report.split_k = split_name;
            variant_reports.push(report);
        }
        let call_bytes = compressor.call_bytes(
            &[((&features).into(), &layout)],
            &Options {
                keep: config.keep,
                profile: true,
                ..Options::default()
            },
        )?;
        // What the compressor holds without the buffers it keeps for reuse: its weights.
        compressor.trim();
        let onednn_rate = onednn_before.map(|before| {
            crate::products::onednn_rate(&large_products, onednn_bf16)
                .map_or(before, |after| before.max(after))
        });
        reports.push(WorkloadReport {
            workload: *workload,
            channels,
            queries: m,
            memory: (compressor.held_bytes(), call_bytes),
            variants: variant_reports,
            onednn_rate,
        });
    }
    Ok(BenchReport {
        adapter: context.map(|c| c.adapter),
        device,
        config: config.clone(),
        unix_time: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        workloads: reports,
        cpu_peak: peak_before.map(|before| before.max(cpu_peak())),
    })
}

/// Medians and spreads of each step over `profiles` (all of the same steps).
fn summarise(
    variant: &'static str,
    association: &'static str,
    profiles: &[Profile],
) -> VariantReport {
    let first = &profiles[0];
    let totals: Vec<f64> = profiles
        .iter()
        .map(|p| p.steps.iter().map(|s| s.seconds).sum())
        .collect();
    let total_time = Spread::of(&totals);
    let times: Vec<Spread> = (0..first.steps.len())
        .map(|index| {
            let times: Vec<f64> = profiles.iter().map(|p| p.steps[index].seconds).collect();
            Spread::of(&times)
        })
        .collect();
    // Shares of the sum of the step medians, so that they add up to one.
    let median_sum: f64 = times.iter().map(|t| t.median).sum();
    let steps: Vec<StepReport> = first
        .steps
        .iter()
        .zip(times)
        .map(|(step, time)| StepReport {
            name: step.name.to_string(),
            flops: step.flops,
            bytes: step.bytes,
            share: time.median / median_sum,
            time,
        })
        .collect();
    let total = StepReport {
        name: "total".to_string(),
        flops: steps.iter().map(|s| s.flops).sum(),
        bytes: steps.iter().map(|s| s.bytes).sum(),
        time: total_time,
        share: 1.0,
    };
    let calls: Vec<f64> = profiles.iter().map(|p| p.call_seconds).collect();
    VariantReport {
        variant,
        association,
        split_k: String::new(),
        clock: first.clock.name(),
        steps,
        total,
        call: Spread::of(&calls),
    }
}

impl BenchReport {
    /// The report as JSON, for putting results from several GPUs side by side.
    pub fn to_json(&self) -> Value {
        let device = match &self.adapter {
            Some(a) => json!({
                "name": a.name,
                "vendor": a.vendor,
                "backend": a.backend,
                "device_type": a.device_type,
                "driver": a.driver,
                "timestamps": a.timestamps,
            }),
            None => json!({
                "name": "cpu",
                "vendor": "",
                "backend": "cpu",
                "device_type": "cpu",
                "driver": "",
                "timestamps": false,
            }),
        };
        let workloads: Vec<Value> = self
            .workloads
            .iter()
            .map(|w| {
                json!({
                    "workload": w.workload.name,
                    "about": w.workload.about,
                    "tokens": w.workload.tokens,
                    "width": w.workload.width,
                    "channels": w.channels,
                    "queries": w.queries,
                    "held_bytes": w.memory.0,
                    "call_bytes": w.memory.1,
                    "speedup_over_naive": w.speedup(),
                    "onednn_gflops_per_s": w.onednn_rate,
                    "variants": w.variants.iter().map(|v| json!({
                        "variant": v.variant,
                        "association": v.association,
                        "split_k": v.split_k,
                        "clock": v.clock,
                        "steps": v.steps.iter().map(StepReport::json).collect::<Vec<_>>(),
                        "total": v.total.json(),
                        "call": v.call.json(),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({
            "tool": format!("metacompress {}", env!("CARGO_PKG_VERSION")),
            "unix_time": self.unix_time,
            "device": device,
            "device_summary": self.device,
            "keep": self.config.keep.value(),
            "precision": self.config.precision.name(),
            "runs": self.config.runs,
            "batch": self.config.batch,
            "warmup": self.config.warmup,
            "workloads": workloads,
            "cpu_peak_gflops_per_s": self.cpu_peak,
            "cpu_peak_size": self.cpu_peak.map(|_| PEAK_SIZE),
        })
    }

    /// The report as a table for people.
    pub fn to_table(&self) -> String {
        let mut text = String::new();
        match &self.adapter {
            Some(a) => text.push_str(&format!(
                "device: {} | vendor {} | {} | type {} | driver {} | timestamps {}\n",
                a.name,
                a.vendor,
                a.backend,
                a.device_type,
                a.driver_or_unknown(),
                if a.timestamps { "yes" } else { "no" }
            )),
            None => text.push_str(&format!("device: {}\n", self.device)),
        }
        if let Some(peak) = self.cpu_peak {
            text.push_str(&format!(
                "peak: {peak:.1} GFLOP/s, this path's f32 product on {PEAK_SIZE}^3 (better of \
                 before and after the workloads)\n"
            ));
        }
        for w in &self.workloads {
            text.push_str(&format!(
                "\n{} ({}): batch {}, n {}, d {}, d_c {}, keep {} -> m {}, {}, {} timed runs after {} warm-up\n",
                w.workload.name,
                w.workload.about,
                self.config.batch,
                w.workload.tokens,
                w.workload.width,
                w.channels,
                self.config.keep.value(),
                w.queries,
                self.config.precision.name(),
                self.config.runs,
                self.config.warmup
            ));
            if w.memory != (0, 0) {
                text.push_str(&format!(
                    "  GPU memory: {:.1} MB held (weights), {:.1} MB allocated by a call\n",
                    w.memory.0 as f64 / 1e6,
                    w.memory.1 as f64 / 1e6
                ));
            }
            for v in &w.variants {
                let split = match v.split_k.as_str() {
                    "" => String::new(),
                    name => format!("; split-K {name}"),
                };
                text.push_str(&format!(
                    "  {} (scores via {}{split}; clock {})\n",
                    v.variant, v.association, v.clock
                ));
                text.push_str(
                    "    step        median ms     min ms     max ms     GFLOP   GFLOP/s      GB/s   share\n",
                );
                for step in v.steps.iter().chain([&v.total]) {
                    text.push_str(&format!(
                        "    {:<10} {:>10.3} {:>10.3} {:>10.3} {:>9.3} {:>9.2} {:>9.2} {:>6.1}%\n",
                        step.name,
                        step.time.median * 1e3,
                        step.time.min * 1e3,
                        step.time.max * 1e3,
                        step.flops / 1e9,
                        step.gflops(),
                        step.gbytes(),
                        100.0 * step.share
                    ));
                }
                text.push_str(&format!(
                    "    whole call (host clock: upload, steps, read-back): median {:.3} ms, min {:.3}, max {:.3}\n",
                    v.call.median * 1e3,
                    v.call.min * 1e3,
                    v.call.max * 1e3
                ));
                if let Some(peak) = self.cpu_peak {
                    text.push_str(&format!(
                        "    forward at {:.2} of the peak (median), {:.2} (best run)\n",
                        v.total.gflops() / peak,
                        v.total.flops / v.total.time.min / 1e9 / peak
                    ));
                }
                if let Some(rate) = w.onednn_rate {
                    text.push_str(&format!(
                        "    forward at {:.2} of oneDNN's {} matmul on its two large products \
                         ({rate:.1} GFLOP/s, plain layouts) (median), {:.2} (best run)\n",
                        v.total.gflops() / rate,
                        self.config.precision.name(),
                        v.total.flops / v.total.time.min / 1e9 / rate
                    ));
                }
            }
            if let Some(speedup) = w.speedup() {
                text.push_str(&format!(
                    "  tuned over naive, total of the steps (medians): {speedup:.2}x\n"
                ));
            }
        }
        text
    }
}

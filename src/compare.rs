//! `metacompress compare`: every applicable method on the same features, with fidelity
//! measures that need no language model. All measures are computed in float64:
//!
//! - **attention error**: for each probe query `q`, the attention output over all tokens,
//!   `o = softmax(X q / sqrt d)^T X`, against the one over the reduced tokens,
//!   `o' = softmax(Y q / sqrt d + b)^T Y`, as `||o' - o|| / ||o||`, averaged over probes;
//!   `b = 0`, or with proportional attention `b_i = log size_i`, where
//!   `size_i = sum_j P[i,j] / sum_i' P[i',j]` is how many input tokens `i` stands for;
//! - **coverage**: the mean over input tokens of the best cosine similarity to a reduced token;
//! - **energy kept**: `||X Pi||^2 / ||X||^2`, `Pi` the orthogonal projection onto the span of
//!   the reduced tokens.
//!
//! Batches report the mean over images.

use std::time::Instant;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::compress::Compressed;
use crate::error::Result;
use crate::methods::{check_footprint, footprint, Method, Request, Runner};
use crate::options::Options;
use crate::products::{product, View};
use crate::tensor::Features;

/// The fidelity of one method's reduced tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Fidelity {
    /// Mean relative error of attention outputs over the probes.
    pub attention_error: f64,
    /// The same with proportional attention (`log size` added to each reduced logit).
    pub proportional_error: f64,
    /// Mean over input tokens of the best cosine to any reduced token.
    pub coverage: f64,
    /// Share of `X`'s energy in the span of the reduced tokens.
    pub energy: f64,
}

/// `count` probe queries drawn per channel from the features' own mean and standard
/// deviation (over every token of every image), from `seed`.
pub fn probes_from_statistics(features: &Features, count: usize, seed: u64) -> Vec<f32> {
    let d = features.width();
    let rows = (features.values().len() / d) as f64;
    let mut mean = vec![0.0f64; d];
    let mut square = vec![0.0f64; d];
    for token in features.values().chunks_exact(d) {
        for ((m, s), &v) in mean.iter_mut().zip(&mut square).zip(token) {
            *m += v as f64;
            *s += v as f64 * v as f64;
        }
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let deviation: Vec<f64> = mean
        .iter_mut()
        .zip(&square)
        .map(|(m, s)| {
            *m /= rows;
            (s / rows - *m * *m).max(0.0).sqrt()
        })
        .collect();
    (0..count * d)
        .map(|i| {
            let z: f64 = StandardNormal.sample(&mut rng);
            (mean[i % d] + deviation[i % d] * z) as f32
        })
        .collect()
}

/// How many input tokens each reduced token stands for: `size_i = sum_j P[i,j] / c_j`,
/// `c_j = sum_i' P[i',j]` (columns no row weighs count for nothing).
pub fn sizes(p: &[f32], n: usize) -> Vec<f64> {
    let mut columns = vec![0.0f64; n];
    for row in p.chunks_exact(n) {
        columns
            .iter_mut()
            .zip(row)
            .for_each(|(c, &v)| *c += v as f64);
    }
    p.chunks_exact(n)
        .map(|row| {
            row.iter()
                .zip(&columns)
                .filter(|(&v, _)| v != 0.0)
                .map(|(&v, c)| v as f64 / c)
                .sum()
        })
        .collect()
}

fn widen(values: &[f32]) -> Vec<f64> {
    values.iter().map(|&v| v as f64).collect()
}

/// `out = a b` in float64 for row-major `a` (`rows x inner`) and `b` (`inner x columns`, or
/// with `b_transposed` its transpose `columns x inner`); `out` row-major `rows x columns`.
fn multiply_f64(a: &[f64], inner: usize, b: &[f64], b_transposed: bool, out: &mut [f64]) {
    let rows = a.len() / inner.max(1);
    let columns = b.len() / inner.max(1);
    let b = if b_transposed {
        View::row_major(b, columns, inner).transposed()
    } else {
        View::row_major(b, inner, columns)
    };
    product(View::row_major(a, rows, inner), b, out);
}

/// `softmax(logits + bias)` over each column of `logits` (`rows x probes`), then the
/// attention outputs `weights^T tokens` (`probes x d`).
fn attend(tokens: &[f64], d: usize, probes: &[f64], bias: Option<&[f64]>) -> Vec<f64> {
    let rows = tokens.len() / d;
    let count = probes.len() / d;
    let mut logits = vec![0.0; rows * count];
    multiply_f64(tokens, d, probes, true, &mut logits);
    let scale = 1.0 / (d as f64).sqrt();
    // Column-wise softmax, stored transposed (`probes x rows`) for the product below.
    let mut weights = vec![0.0; count * rows];
    for probe in 0..count {
        let column = |r: usize| logits[r * count + probe] * scale + bias.map_or(0.0, |b| b[r]);
        let largest = (0..rows).map(column).fold(f64::NEG_INFINITY, f64::max);
        let out = &mut weights[probe * rows..][..rows];
        for (r, w) in out.iter_mut().enumerate() {
            *w = (column(r) - largest).exp();
        }
        let total: f64 = out.iter().sum();
        out.iter_mut().for_each(|w| *w /= total);
    }
    let mut outputs = vec![0.0; count * d];
    multiply_f64(&weights, rows, tokens, false, &mut outputs);
    outputs
}

/// Mean over probes of `||o' - o|| / ||o||`.
fn relative_errors(full: &[f64], reduced: &[f64], d: usize) -> f64 {
    let count = full.len() / d;
    let total: f64 = full
        .chunks_exact(d)
        .zip(reduced.chunks_exact(d))
        .map(|(o, r)| {
            let error: f64 = o.iter().zip(r).map(|(a, b)| (a - b) * (a - b)).sum();
            let norm: f64 = o.iter().map(|a| a * a).sum();
            (error / norm).sqrt()
        })
        .sum();
    total / count as f64
}

/// Rows scaled to unit length (zero rows stay zero).
fn unit(rows: &[f64], d: usize) -> Vec<f64> {
    let mut out = rows.to_vec();
    for row in out.chunks_exact_mut(d) {
        let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt();
        if norm > 0.0 {
            row.iter_mut().for_each(|v| *v /= norm);
        }
    }
    out
}

/// An orthonormal basis (rows) of the span of `rows`, by modified Gram-Schmidt applied
/// twice; directions below `1e-10` of their original norm are dropped as dependent.
fn orthonormal_basis(rows: &[f64], d: usize) -> Vec<f64> {
    let mut basis: Vec<f64> = Vec::new();
    for row in rows.chunks_exact(d) {
        let original = row.iter().map(|v| v * v).sum::<f64>().sqrt();
        let mut v = row.to_vec();
        for _ in 0..2 {
            for b in basis.chunks_exact(d) {
                let dot: f64 = v.iter().zip(b).map(|(x, y)| x * y).sum();
                v.iter_mut().zip(b).for_each(|(x, y)| *x -= dot * y);
            }
        }
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        if original > 0.0 && norm > 1e-10 * original {
            basis.extend(v.iter().map(|x| x / norm));
        }
    }
    basis
}

/// What the measures need of one input image (`n x d`), whatever the method: computed once
/// per image and measured against every method's reduced tokens.
pub struct ImageBaseline {
    d: usize,
    /// The tokens in float64.
    tokens: Vec<f64>,
    /// The tokens scaled to unit length.
    unit_tokens: Vec<f64>,
    /// The probes in float64.
    probes: Vec<f64>,
    /// The attention outputs over all tokens (`probes x d`).
    full: Vec<f64>,
    /// `||X||^2`.
    energy: f64,
}

impl ImageBaseline {
    /// The baseline of image `x` (`n x d`) for `probes` (`q x d`).
    pub fn new(x: &[f32], probes: &[f32], d: usize) -> Self {
        let (tokens, probes) = (widen(x), widen(probes));
        let full = attend(&tokens, d, &probes, None);
        ImageBaseline {
            d,
            unit_tokens: unit(&tokens, d),
            energy: tokens.iter().map(|v| v * v).sum(),
            tokens,
            probes,
            full,
        }
    }

    /// The fidelity of `y` (`m x d`, from `p`, `m x n`) to this image.
    pub fn fidelity(&self, y: &[f32], p: &[f32]) -> Fidelity {
        let d = self.d;
        let n = self.tokens.len() / d;
        let m = y.len() / d;
        let y = widen(y);
        let log_sizes: Vec<f64> = sizes(p, n).iter().map(|s| s.ln()).collect();
        let attention_error = relative_errors(&self.full, &attend(&y, d, &self.probes, None), d);
        let proportional_error = relative_errors(
            &self.full,
            &attend(&y, d, &self.probes, Some(&log_sizes)),
            d,
        );

        let mut cosines = vec![0.0; n * m];
        multiply_f64(&self.unit_tokens, d, &unit(&y, d), true, &mut cosines);
        let coverage = cosines
            .chunks_exact(m)
            .map(|row| row.iter().cloned().fold(f64::NEG_INFINITY, f64::max))
            .sum::<f64>()
            / n as f64;

        let basis = orthonormal_basis(&y, d);
        let rank = basis.len() / d;
        let mut coordinates = vec![0.0; n * rank];
        multiply_f64(&self.tokens, d, &basis, true, &mut coordinates);
        let kept: f64 = coordinates.iter().map(|c| c * c).sum();
        Fidelity {
            attention_error,
            proportional_error,
            coverage,
            energy: if self.energy > 0.0 {
                kept / self.energy
            } else {
                1.0
            },
        }
    }
}

/// The fidelity of `y` (`m x d`, from `p`, `m x n`) to one image `x` (`n x d`), for `probes`
/// (`q x d`).
pub fn fidelity(x: &[f32], y: &[f32], p: &[f32], probes: &[f32], d: usize) -> Fidelity {
    ImageBaseline::new(x, probes, d).fidelity(y, p)
}

/// The mean fidelity over the images of `features` of each result, each image's baseline
/// computed once for all of them.
pub fn mean_fidelities(
    features: &Features,
    results: &[&Compressed],
    probes: &[f32],
) -> Vec<Fidelity> {
    let (n, d) = (features.tokens(), features.width());
    let mut sums = vec![Fidelity::default(); results.len()];
    for image in 0..features.batch() {
        let baseline = ImageBaseline::new(features.image(image), probes, d);
        for (sum, result) in sums.iter_mut().zip(results) {
            let m = result.queries.count;
            let p = result.projection.as_ref().expect("methods hand back P");
            let f = baseline.fidelity(
                &result.tokens[image * m * d..][..m * d],
                &p[image * m * n..][..m * n],
            );
            sum.attention_error += f.attention_error;
            sum.proportional_error += f.proportional_error;
            sum.coverage += f.coverage;
            sum.energy += f.energy;
        }
    }
    let images = features.batch() as f64;
    sums.into_iter()
        .map(|sum| Fidelity {
            attention_error: sum.attention_error / images,
            proportional_error: sum.proportional_error / images,
            coverage: sum.coverage / images,
            energy: sum.energy / images,
        })
        .collect()
}

/// One method's row of the table.
#[derive(Clone, Debug)]
pub struct MethodReport {
    /// The method.
    pub method: Method,
    /// Reduced tokens per image `m`.
    pub tokens: usize,
    /// Wall seconds of the call (building `P` and `Y = P X`, every image).
    pub seconds: f64,
    /// The mean fidelity over images.
    pub fidelity: Fidelity,
}

/// What `compare` found.
#[derive(Clone, Debug)]
pub struct CompareReport {
    /// What ran `Y = P X`.
    pub device: String,
    /// The keep fraction.
    pub keep: f64,
    /// Images, tokens per image and width.
    pub shape: (usize, usize, usize),
    /// Probe queries, and where they came from.
    pub probes: (usize, String),
    /// One row per method that ran.
    pub methods: Vec<MethodReport>,
    /// Methods that could not run, with why.
    pub skipped: Vec<(Method, String)>,
}

/// Runs every method `runner` and `request` allow (the others are listed as skipped) and
/// measures each; the results come back too (for pictures).
pub fn compare(
    runner: &Runner,
    request: &Request,
    options: &Options,
    probes: &[f32],
    probe_source: &str,
) -> Result<(CompareReport, Vec<(Method, Compressed)>)> {
    let mut methods = Vec::new();
    let mut skipped = Vec::new();
    let mut results = Vec::new();
    let mut seconds = Vec::new();
    let runnable: Vec<Method> = Method::ALL
        .into_iter()
        .filter(|&method| match runner.check(method, request) {
            Ok(()) => true,
            Err(reason) => {
                skipped.push((method, reason.to_string()));
                false
            }
        })
        .collect();
    check_footprint(
        "compare",
        compare_footprint(&runnable, request, options, probes.len()),
    )?;
    let features = &request.features.to_features();
    for method in runnable {
        let started = Instant::now();
        // The measures read every method's P.
        let with_projection = Options {
            save_projection: true,
            ..*options
        };
        let result = runner.run(method, request, &with_projection)?;
        seconds.push(started.elapsed().as_secs_f64());
        results.push((method, result));
    }
    let outputs: Vec<&Compressed> = results.iter().map(|(_, result)| result).collect();
    let fidelities = mean_fidelities(features, &outputs, probes);
    for (((method, result), seconds), fidelity) in results.iter().zip(seconds).zip(fidelities) {
        methods.push(MethodReport {
            method: *method,
            tokens: result.queries.count,
            seconds,
            fidelity,
        });
    }
    let report = CompareReport {
        device: runner.device(),
        keep: options.keep.value(),
        shape: (features.batch(), features.tokens(), features.width()),
        probes: (probes.len() / features.width(), probe_source.to_string()),
        methods,
        skipped,
    };
    Ok((report, results))
}

/// The most host memory `compare` holds at once: the f32 copy of the features and their
/// float64 baseline, every method's `Y` and `P` (kept for the measures and pictures), the
/// largest method's own buffers while it runs, and the largest measure's.
fn compare_footprint(
    methods: &[Method],
    request: &Request,
    options: &Options,
    probes: usize,
) -> u64 {
    let features = &request.features;
    let (b, n, d) = (features.batch(), features.tokens(), features.width());
    let queries = request.layout.queries(options.keep);
    let m = queries.count as u64;
    let (n64, d64) = (n as u64, d as u64);
    let copy = (b as u64)
        .saturating_mul(n64)
        .saturating_mul(d64)
        .saturating_mul(4);
    // The baseline's tokens and unit tokens, and its probes' outputs, in float64.
    let baseline = n64
        .saturating_mul(d64)
        .saturating_mul(16)
        .saturating_add((probes as u64).saturating_mul(8));
    // One measure: the n x m cosines, Y widened, the coordinates in Y's span.
    let measure = n64
        .saturating_mul(m)
        .saturating_mul(8)
        .saturating_add(m.saturating_mul(d64).saturating_mul(16))
        .saturating_add(n64.saturating_mul(m.min(d64)).saturating_mul(8));
    let mut held = copy.saturating_add(baseline);
    let mut peak = held;
    for &method in methods {
        let run = footprint(method, options.scope, (b, n, d), &queries, true);
        peak = peak.max(held.saturating_add(run.peak()));
        held = held.saturating_add(run.held);
    }
    peak.max(held.saturating_add(measure))
}

impl CompareReport {
    /// The table people read.
    pub fn table(&self) -> String {
        let (b, n, d) = self.shape;
        let mut out = format!(
            "compare: {b} image(s) of {n} tokens x {d}, keep {}, on {}\n\
             probes: {} ({})\n\n",
            self.keep, self.device, self.probes.0, self.probes.1
        );
        out.push_str(&format!(
            "{:<13} {:<7} {:>6} {:>10} {:>10} {:>10} {:>9} {:>8}\n",
            "method", "kind", "tokens", "time ms", "attn err", "prop err", "coverage", "energy"
        ));
        for row in &self.methods {
            let f = &row.fidelity;
            out.push_str(&format!(
                "{:<13} {:<7} {:>6} {:>10.1} {:>10.4} {:>10.4} {:>9.4} {:>8.4}\n",
                row.method.name(),
                kind(row.method),
                row.tokens,
                row.seconds * 1e3,
                f.attention_error,
                f.proportional_error,
                f.coverage,
                f.energy
            ));
        }
        for (method, reason) in &self.skipped {
            out.push_str(&format!("{:<13} skipped: {reason}\n", method.name()));
        }
        out
    }

    /// The same as JSON.
    pub fn json(&self) -> serde_json::Value {
        let (b, n, d) = self.shape;
        serde_json::json!({
            "device": self.device,
            "keep": self.keep,
            "batch": b,
            "tokens": n,
            "width": d,
            "probes": { "count": self.probes.0, "source": self.probes.1 },
            "methods": self.methods.iter().map(|row| serde_json::json!({
                "method": row.method.name(),
                "kind": kind(row.method),
                "tokens": row.tokens,
                "seconds": row.seconds,
                "attention_error": row.fidelity.attention_error,
                "proportional_attention_error": row.fidelity.proportional_error,
                "coverage": row.fidelity.coverage,
                "energy_kept": row.fidelity.energy,
            })).collect::<Vec<_>>(),
            "skipped": self.skipped.iter().map(|(method, reason)| serde_json::json!({
                "method": method.name(),
                "reason": reason,
            })).collect::<Vec<_>>(),
        })
    }
}

/// `learned`, `prune` (one-hot rows), `merge` (spread rows) or `mixed` (some of each).
fn kind(method: Method) -> &'static str {
    match method {
        Method::MetaCompress => "learned",
        Method::VisionZip | Method::PruMerge => "mixed",
        method if method.prunes() => "prune",
        _ => "merge",
    }
}

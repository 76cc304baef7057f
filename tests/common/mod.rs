//! Shared by the test files: seeded random inputs, the GPU context (or a loud skip, never a
//! silent one; a failure when `CI` is set), and the error measure of SPEC section 7.
#![allow(dead_code)]

pub mod hardening;
pub mod methods;
pub mod runtime;

use metacompress::gpu::{GpuApi, GpuContext};
use metacompress::{Features, Grid, PMeta, PositionTable};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

/// A fresh seed each run (or `METACOMPRESS_SEED`), printed so a failure can be replayed.
pub fn seeded(test: &str) -> (u64, ChaCha8Rng) {
    let seed = std::env::var("METACOMPRESS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            now.as_nanos() as u64 ^ (test.len() as u64).rotate_left(40)
        });
    eprintln!("{test}: seed {seed} (replay with METACOMPRESS_SEED={seed})");
    (seed, ChaCha8Rng::seed_from_u64(seed))
}

pub fn normal(rng: &mut ChaCha8Rng, count: usize, scale: f32) -> Vec<f32> {
    (0..count)
        .map(|_| rng.sample::<f32, _>(StandardNormal) * scale)
        .collect()
}

/// Standard-normal features.
pub fn features(rng: &mut ChaCha8Rng, batch: usize, tokens: usize, width: usize) -> Features {
    Features::new(
        batch,
        tokens,
        width,
        normal(rng, batch * tokens * width, 1.0),
    )
    .unwrap()
}

/// Random weights with entries of size about 1/sqrt(d), as SPEC section 7 assumes; `omega`
/// around 1, and an optional `gh x gw` standard-normal position table.
pub fn weights(
    rng: &mut ChaCha8Rng,
    width: usize,
    channels: usize,
    table: Option<(usize, usize)>,
) -> PMeta {
    let scale = 1.0 / (width as f32).sqrt();
    let omega = (0..channels).map(|_| 0.5 + rng.random::<f32>()).collect();
    let position = table.map(|(height, table_width)| PositionTable {
        height,
        width: table_width,
        values: normal(rng, height * table_width * width, 1.0),
    });
    PMeta::new(
        width,
        channels,
        normal(rng, width * channels, scale),
        normal(rng, width * channels, scale),
        omega,
        position,
    )
    .unwrap()
}

pub fn grid(offset: usize, height: usize, width: usize) -> Grid {
    Grid::new(offset, height, width)
}

/// `||out - ref|| / ||ref||` (relative Frobenius error).
pub fn relative_error(out: &[f32], reference: &[f64]) -> f64 {
    assert_eq!(
        out.len(),
        reference.len(),
        "output and reference sizes differ"
    );
    let (mut diff, mut norm) = (0.0, 0.0);
    for (o, r) in out.iter().zip(reference) {
        // A NaN left by poisoning makes the error NaN, which fails every bound.
        diff += (*o as f64 - r).powi(2);
        norm += r * r;
    }
    (diff / norm).sqrt()
}

/// The first GPU adapter (lavapipe in CI). Without one: a panic when `CI` is set, else `None`
/// with a loud message, so GPU tests never pass by skipping in CI.
pub fn gpu() -> Option<GpuContext> {
    adapter(GpuApi::Any)
}

/// A Vulkan adapter, for tests that name `--backend vulkan` (a machine may have GL alone):
/// as `gpu()`, a panic when `CI` is set and none exists, else `None` and a loud SKIPPED.
pub fn vulkan() -> Option<GpuContext> {
    adapter(GpuApi::Vulkan)
}

fn adapter(api: GpuApi) -> Option<GpuContext> {
    match GpuContext::open(api, None) {
        Ok(context) => Some(context),
        Err(error) if std::env::var_os("CI").is_some() => {
            panic!(
                "CI is set but no {} adapter is available: {error}",
                api.name()
            )
        }
        Err(error) => {
            eprintln!(
                "SKIPPED: no {} adapter ({error}); set CI=1 to make this a failure",
                api.name()
            );
            None
        }
    }
}

/// The release binary under test.
pub fn binary() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_metacompress"))
}

/// A fresh folder under the target directory for one test.
pub fn folder(test: &str) -> std::path::PathBuf {
    let path = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(test);
    let _ = std::fs::remove_dir_all(&path);
    std::fs::create_dir_all(&path).unwrap();
    path
}

/// `out` against the float64 reference within `tolerance`.
pub fn assert_reference(
    out: &metacompress::Compressed,
    features: &Features,
    weights: &PMeta,
    layout: &metacompress::Layout,
    options: &metacompress::Options,
    tolerance: f64,
    what: &str,
) {
    let queries = layout.queries(options.keep);
    let expected =
        metacompress::reference::forward(features, weights, layout, &queries, options.scope);
    let tokens = relative_error(&out.tokens, &expected.tokens);
    assert!(tokens <= tolerance, "{what}: tokens error {tokens:e}");
    if let Some(projection) = &out.projection {
        let error = relative_error(projection, &expected.projection);
        assert!(error <= tolerance, "{what}: projection error {error:e}");
        // Exactly 0 outside each query's keys.
        let (n, m) = (layout.tokens(), queries.count);
        for (row, values) in projection.chunks_exact(n).enumerate() {
            let keys = queries.keys(row % m, options.scope, n);
            for (j, p) in values.iter().enumerate() {
                if !keys.contains(j) {
                    assert_eq!(*p, 0.0, "{what}: P[{row}, {j}] outside its keys");
                }
            }
        }
    }
}

/// The method runners of every backend this machine has: the CPU path, the float64 reference
/// and, when there is an adapter, the GPU.
pub fn runners() -> Vec<(&'static str, metacompress::methods::Runner)> {
    use metacompress::methods::Runner;
    use metacompress::{Backend, Precision};
    let mut runners = vec![
        (
            "cpu",
            Runner::new(None, Backend::Cpu, None, Precision::F32).unwrap(),
        ),
        (
            "reference",
            Runner::new(None, Backend::Reference, None, Precision::F32).unwrap(),
        ),
    ];
    if let Some(context) = gpu() {
        runners.push((
            "gpu",
            Runner::on_context(None, context, Precision::F32).unwrap(),
        ));
    }
    runners
}

/// Tensor `name` of a safetensors file, which must be F32.
pub fn f32_tensor(file: &safetensors::SafeTensors, name: &str) -> Vec<f32> {
    let view = file.tensor(name).unwrap();
    assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
    view.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// The arguments of `metacompress compress` with these files and `extra` flags; on the CPU
/// path unless `extra` names a `--backend`.
pub fn compress_args(
    weights: &std::path::Path,
    input: &std::path::Path,
    output: &std::path::Path,
    extra: &[&str],
) -> Vec<String> {
    let mut args: Vec<String> = vec!["compress".into(), "--weights".into()];
    for (flag, path) in [("", weights), ("--input", input), ("--output", output)] {
        if !flag.is_empty() {
            args.push(flag.into());
        }
        args.push(path.to_str().expect("a UTF-8 path").into());
    }
    if !extra.contains(&"--backend") {
        args.extend(["--backend".into(), "cpu".into()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

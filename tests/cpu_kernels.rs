//! The CPU path's kernel levels and bf16 storage through the real binary: the default kernels
//! (`gemm`'s, chosen for this CPU) and the forced SIMD-free fallback
//! (`METACOMPRESS_CPU_KERNELS=portable`, what a CPU without AVX2/AVX-512 can always run), at
//! f32 and bf16, on f32 and bf16 input files with a strided layout, loose tokens, a batch and
//! both scopes, against the float64 reference; and the refusals that go with them.

mod common;

use common::{
    binary, compress_args as compress, f32_tensor, features, folder, relative_error, seeded,
    weights,
};
use metacompress::files;
use metacompress::{reference, Dtype, Features, Grid, Keep, Layout, Scope};
use rand::Rng;
use safetensors::SafeTensors;

/// Runs the binary with `METACOMPRESS_CPU_KERNELS` set to `kernels` (unset for `None`);
/// the exit code and what it printed (stdout, then stderr).
fn run(args: &[String], kernels: Option<&str>) -> (i32, String) {
    run_with(args, kernels, None)
}

/// `run` with `METACOMPRESS_ONEDNN_LIBRARY` set to `library` (unset for `None`).
fn run_with(args: &[String], kernels: Option<&str>, library: Option<&str>) -> (i32, String) {
    let mut command = binary();
    command
        .args(args)
        .env_remove("METACOMPRESS_CPU_KERNELS")
        .env_remove("METACOMPRESS_ONEDNN_LIBRARY");
    if let Some(library) = library {
        command.env("METACOMPRESS_ONEDNN_LIBRARY", library);
    }
    if let Some(kernels) = kernels {
        command.env("METACOMPRESS_CPU_KERNELS", kernels);
    }
    let output = command.output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr),
    )
}

/// Whether oneDNN runs here: the binary takes `METACOMPRESS_CPU_KERNELS=onednn`. Where the
/// tests run with that variable set (CI), it must.
fn onednn_runs(args: &[String]) -> bool {
    let (code, printed) = run(args, Some("onednn"));
    let required = std::env::var("METACOMPRESS_CPU_KERNELS").is_ok_and(|v| v == "onednn");
    assert!(
        code == 0 || !required,
        "METACOMPRESS_CPU_KERNELS=onednn is set but the binary refuses it: {printed}"
    );
    code == 0
}

/// Every kernel level of this build (oneDNN where it runs), and the names the device line may
/// give it (`auto` takes oneDNN where it loads on an AVX-512 CPU).
fn levels(onednn: bool) -> Vec<(Option<&'static str>, &'static [&'static str])> {
    let default: &[&str] = if cfg!(feature = "openblas") {
        &["OpenBLAS", "oneDNN"]
    } else {
        &["gemm", "oneDNN"]
    };
    let mut levels = vec![
        (None, default),
        (Some("gemm"), &["gemm"][..]),
        (Some("portable"), &["portable"][..]),
    ];
    if cfg!(feature = "openblas") {
        levels.push((Some("openblas"), &["OpenBLAS"][..]));
    }
    if onednn {
        levels.push((Some("onednn"), &["oneDNN"][..]));
    }
    levels
}

#[test]
fn every_kernel_level_and_precision_matches_the_reference() {
    let dir = folder("cpu_kernels");
    let (seed, mut rng) = seeded("every_kernel_level_and_precision");
    // A fresh layout each run: loose tokens, a grid, loose tokens, a grid whose rows are
    // further apart than its width (other tokens between them), loose tokens; odd width d.
    let first = Grid::new(
        rng.random_range(0..3),
        rng.random_range(2..7),
        rng.random_range(2..8),
    );
    let (rows, width) = (rng.random_range(2..5), rng.random_range(2..6));
    let second = Grid::strided(
        first.end() + rng.random_range(0..3),
        rows,
        width,
        width + rng.random_range(1..3),
    );
    let n = second.end() + rng.random_range(0..3);
    let (d, batch) = (rng.random_range(9..41) | 1, 2);
    let layout = Layout::new(n, vec![first, second]).unwrap();
    let grids_json = format!(
        "[[{},{},{}],[{},{},{},{}]]",
        first.offset,
        first.height,
        first.width,
        second.offset,
        second.height,
        second.width,
        second.stride
    );
    let channels = rng.random_range(1..8);
    let pmeta = weights(&mut rng, d, channels, Some((4, 3)));
    let weights_file = dir.join("weights.safetensors");
    files::write_weights(&weights_file, &pmeta).unwrap();
    let f32_features = features(&mut rng, batch, n, d);
    // The bf16 file's values, widened exactly: what the reference sees for it.
    let bf16_features = Features::new(
        batch,
        n,
        d,
        f32_features
            .values()
            .iter()
            .map(|&v| half::bf16::from_f32(v).to_f32())
            .collect(),
    )
    .unwrap();
    let keep = Keep::new(0.3).unwrap();
    let queries = layout.queries(keep);
    let mut onednn = None;
    for (dtype, values) in [(Dtype::F32, &f32_features), (Dtype::BF16, &bf16_features)] {
        let input = dir.join(format!("features-{}.safetensors", dtype.name()));
        files::write_input(&input, values, true, dtype, Some(&grids_json), None).unwrap();
        let onednn = *onednn.get_or_insert_with(|| {
            onednn_runs(&compress(
                &weights_file,
                &input,
                &dir.join("probe.safetensors"),
                &["--backend", "cpu"],
            ))
        });
        for scope in [Scope::Image, Scope::Grid] {
            let expected = reference::forward(values, &pmeta, &layout, &queries, scope);
            for (kernels, names) in levels(onednn) {
                for (precision, bound) in [("f32", 1e-4), ("bf16", 1e-2)] {
                    let what = format!(
                        "seed {seed}: n {n} d {d} grids {grids_json}: {} input, {scope:?}, \
                         kernels {kernels:?}, {precision}",
                        dtype.name()
                    );
                    let output = dir.join("out.safetensors");
                    // A stale output must not pass for this run's.
                    std::fs::write(&output, b"poison").unwrap();
                    let args = compress(
                        &weights_file,
                        &input,
                        &output,
                        &[
                            "--keep",
                            "0.3",
                            "--scope",
                            scope.name(),
                            "--backend",
                            "cpu",
                            "--precision",
                            precision,
                            "--output-dtype",
                            "f32",
                            "--save-projection",
                        ],
                    );
                    let (code, stderr) = run(&args, kernels);
                    assert_eq!(code, 0, "{what}: {stderr}");
                    assert!(
                        names.iter().any(|name| stderr.contains(name)),
                        "{what}: ran on {stderr}"
                    );
                    let bytes = std::fs::read(&output).unwrap();
                    let file = SafeTensors::deserialize(&bytes).unwrap();
                    let tokens = relative_error(&f32_tensor(&file, "tokens"), &expected.tokens);
                    let projection = f32_tensor(&file, "projection");
                    let projection_error = relative_error(&projection, &expected.projection);
                    assert!(
                        tokens <= bound && projection_error <= bound,
                        "{what}: errors {tokens:e} {projection_error:e}"
                    );
                    for (row, values) in projection.chunks_exact(n).enumerate() {
                        let keys = queries.keys(row % queries.count, scope, n);
                        for (j, p) in values.iter().enumerate() {
                            if !keys.contains(j) {
                                assert_eq!(*p, 0.0, "{what}: P[{row}, {j}] outside its keys");
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn kernel_levels_and_precisions_that_do_not_exist_are_refused_in_one_line() {
    let dir = folder("cpu_kernels_refusals");
    let (_, mut rng) = seeded("cpu_kernels_refusals");
    let weights_file = dir.join("weights.safetensors");
    files::write_weights(&weights_file, &weights(&mut rng, 9, 3, None)).unwrap();
    let input = dir.join("features.safetensors");
    files::write_input(
        &input,
        &features(&mut rng, 1, 16, 9),
        false,
        Dtype::F32,
        None,
        None,
    )
    .unwrap();
    let output = dir.join("out.safetensors");
    let mut cases: Vec<(&[&str], Option<&str>, &[&str])> = vec![
        (
            &["--backend", "cpu"],
            Some("avx9"),
            &["METACOMPRESS_CPU_KERNELS", "avx9", "auto", "portable"],
        ),
        (
            &["--backend", "reference", "--precision", "bf16"],
            None,
            &["bf16", "reference", "expected f32"],
        ),
        (
            &["--backend", "cpu", "--precision", "f16"],
            None,
            &["f16", "cpu", "expected f32 or bf16"],
        ),
    ];
    if common::vulkan().is_some() {
        cases.push((
            &["--backend", "vulkan", "--precision", "bf16"],
            None,
            &["bf16", "cpu backend", "f32 or f16"],
        ));
    }
    for (extra, kernels, says) in cases {
        let args = compress(&weights_file, &input, &output, extra);
        let (code, stderr) = run(&args, kernels);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("metacompress: "), "{args:?}: {stderr}");
        for word in says {
            assert!(stderr.contains(word), "{args:?}: {stderr:?} lacks {word:?}");
        }
        assert!(!output.exists(), "{args:?}: an output was written");
    }
    // Without oneDNN (a library path that does not exist): `onednn` is refused in one line,
    // `auto` falls back to the build's other kernels and still matches the reference.
    let args = compress(&weights_file, &input, &output, &["--backend", "cpu"]);
    let (code, stderr) = run_with(&args, Some("onednn"), Some("/nonexistent/libdnnl.so.2"));
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    for word in [
        "METACOMPRESS_CPU_KERNELS=onednn",
        "/nonexistent/libdnnl.so.2",
    ] {
        assert!(stderr.contains(word), "{stderr:?} lacks {word:?}");
    }
    assert!(!output.exists(), "an output was written");
    // A library that is not oneDNN 2.x (here the C maths library, which lacks its functions;
    // a oneDNN 3.x is refused by its version the same way): refused in one line, no crash.
    if std::path::Path::new("/lib/x86_64-linux-gnu/libm.so.6").exists() {
        let (code, stderr) = run_with(
            &args,
            Some("onednn"),
            Some("/lib/x86_64-linux-gnu/libm.so.6"),
        );
        assert_eq!(code, 2, "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains("lacks dnnl_version"), "{stderr}");
    }
    for precision in ["f32", "bf16"] {
        let args = compress(
            &weights_file,
            &input,
            &output,
            &["--backend", "cpu", "--precision", precision],
        );
        let (code, printed) = run_with(&args, Some("auto"), Some("/nonexistent/libdnnl.so.2"));
        assert_eq!(code, 0, "{printed}");
        assert!(!printed.contains("oneDNN"), "{printed}");
        assert!(
            printed.contains("gemm") || printed.contains("OpenBLAS"),
            "{printed}"
        );
        std::fs::remove_file(&output).unwrap();
    }
    // bf16 with the automatic backend runs on the CPU.
    let args = compress(
        &weights_file,
        &input,
        &output,
        &["--backend", "auto", "--precision", "bf16"],
    );
    let (code, printed) = run(&args, None);
    assert_eq!(code, 0, "{printed}");
    assert!(printed.contains("auto chose the cpu path"), "{printed}");
}

//! The benchmark harness: `metacompress bench` on the tiny workload writes a valid JSON report
//! (GPU and CPU paths), and profiled calls name their steps and still give right tokens.

mod common;

use common::{features, gpu, grid, relative_error, seeded, weights};
use metacompress::{
    reference, Association, Clock, Compressor, Keep, KernelVariant, Layout, Options, Precision,
};
use serde_json::Value;

/// Runs `metacompress bench` on the tiny workload with `extra` flags; returns the JSON report.
fn bench_json(extra: &[&str]) -> Value {
    let folder = std::env::temp_dir().join(format!("metacompress-bench-{}", std::process::id()));
    std::fs::create_dir_all(&folder).unwrap();
    let path = folder.join(format!("report-{}.json", extra.join("-")));
    let output = common::binary()
        .args([
            "bench",
            "--workload",
            "tiny",
            "--runs",
            "3",
            "--warmup",
            "1",
        ])
        .args(extra)
        .arg("--json")
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "bench failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("tiny"), "{stdout}");
    let report = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    std::fs::remove_file(&path).unwrap();
    report
}

/// Checks one variant's steps: names, positive times and work, shares summing to one.
fn check_variant(variant: &Value, expected_steps: &[&str]) {
    let steps = variant["steps"].as_array().unwrap();
    let names: Vec<&str> = steps.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, expected_steps, "{variant}");
    let mut share = 0.0;
    for step in steps.iter().chain([&variant["total"]]) {
        let time = &step["time"];
        let (min, median, max) = (
            time["min_ms"].as_f64().unwrap(),
            time["median_ms"].as_f64().unwrap(),
            time["max_ms"].as_f64().unwrap(),
        );
        assert!(0.0 < min && min <= median && median <= max, "{step}");
        assert!(step["flops"].as_f64().unwrap() > 0.0, "{step}");
        assert!(step["bytes"].as_f64().unwrap() > 0.0, "{step}");
        assert!(step["gflops_per_s"].as_f64().unwrap() > 0.0, "{step}");
    }
    for step in steps {
        share += step["share"].as_f64().unwrap();
    }
    // Medians of parts need not add up to the median of the sums exactly.
    assert!(
        (share - 1.0).abs() < 0.25,
        "shares sum to {share}: {variant}"
    );
    assert!(variant["call"]["median_ms"].as_f64().unwrap() > 0.0);
}

#[test]
fn bench_on_the_gpu_reports_tuned_and_naive_as_json() {
    let Some(context) = gpu() else { return };
    let report = bench_json(&[
        "--backend",
        &context.adapter.backend,
        "--batch",
        "2",
        "--shared",
        "--split-k",
        "auto,3",
    ]);
    assert_eq!(report["device"]["name"], context.adapter.name.as_str());
    assert_eq!(report["batch"], 2);
    assert!(!report["device"]["vendor"].as_str().unwrap().is_empty());
    assert_eq!(report["runs"], 3);
    assert_eq!(report["precision"], "f32");
    let workload = &report["workloads"][0];
    assert_eq!(workload["workload"], "tiny");
    assert_eq!(workload["tokens"], 97);
    // The footprint: weights held (w_q and w_k, 75 x 75 f32 each: d_c is d when d < 256; the
    // table projected by w_k, 24 x 24 x 75) and a call's buffers, at least the two images'
    // features.
    assert_eq!(workload["held_bytes"], 4 * (2 * 75 * 75 + 24 * 24 * 75));
    assert!(workload["call_bytes"].as_u64().unwrap() > 2 * 97 * 75 * 4);
    let variants = workload["variants"].as_array().unwrap();
    let names: Vec<&str> = variants
        .iter()
        .map(|v| v["variant"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["tuned", "tuned", "shared", "shared", "naive"]);
    // Each split-K policy is a variant of its own; auto is off on a software adapter.
    let auto = match context.is_software() {
        true => "off (auto: software adapter)",
        false => "auto",
    };
    let splits: Vec<&str> = variants
        .iter()
        .map(|v| v["split_k"].as_str().unwrap())
        .collect();
    assert_eq!(splits, [auto, "3", auto, "3", "off"]);
    // The tiny workload has fewer queries than channels: the tuned kernels fold w_k into the
    // queries; the naive ones go through the keys.
    for variant in &variants[..4] {
        assert_eq!(variant["association"], "tokens");
    }
    assert_eq!(variants[4]["association"], "keys");
    let common = ["pooling", "queries", "position"];
    let tail = ["softmax", "reduction"];
    let tuned: Vec<&str> = [&common[..], &["fold_w_k", "scores"], &tail[..]].concat();
    let naive: Vec<&str> = [&common[..], &["keys", "scores"], &tail[..]].concat();
    // In 3 pieces the queries and the scores (inner dimension d = 75) each add a sum pass,
    // merged into one step; fold_w_k's inner dimension (d_c = 75) splits too.
    let split: Vec<&str> = [
        &common[..2],
        &["split_sum", "position", "fold_w_k", "scores"],
        &tail[..],
    ]
    .concat();
    // Auto leaves them whole (pieces of at least 256 on hardware, none on software).
    check_variant(&variants[0], &tuned);
    check_variant(&variants[1], &split);
    check_variant(&variants[2], &tuned);
    check_variant(&variants[3], &split);
    check_variant(&variants[4], &naive);
    assert!(workload["speedup_over_naive"].as_f64().unwrap() > 0.0);
}

#[test]
fn bench_on_the_cpu_path_reports_one_step() {
    let report = bench_json(&["--backend", "cpu"]);
    assert_eq!(report["device"]["backend"], "cpu");
    let variants = report["workloads"][0]["variants"].as_array().unwrap();
    assert_eq!(variants.len(), 1);
    assert_eq!(variants[0]["variant"], "cpu");
    assert_eq!(variants[0]["clock"], "host-clock-per-call");
    check_variant(&variants[0], &["forward"]);
    assert!(report["workloads"][0]["speedup_over_naive"].is_null());
    assert_eq!(report["workloads"][0]["call_bytes"], 0);
}

#[test]
fn bench_refuses_bad_flags_in_one_line() {
    for (flags, named) in [
        (&["--workload", "llava-99b"][..], "llava-99b"),
        (&["--workload", "tiny", "--runs", "0"][..], "--runs 0"),
        (&["--workload", "tiny", "--dc", "80"][..], "--dc 80"),
        (&["--workload", "tiny", "--keep", "0"][..], "0"),
        (
            &["--workload", "tiny", "--backend", "reference"][..],
            "reference",
        ),
        (&["--workload", "tiny", "--split-k", "0"][..], "\"0\""),
        (
            &["--workload", "tiny", "--split-k", "auto,65"][..],
            "\"65\"",
        ),
    ] {
        let output = common::binary().arg("bench").args(flags).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.contains("XDG_RUNTIME_DIR"))
            .collect();
        assert_eq!(output.status.code(), Some(2), "{flags:?}: {stderr}");
        assert_eq!(lines.len(), 1, "{flags:?}: {stderr}");
        assert!(lines[0].contains(named), "{flags:?}: {stderr}");
    }
}

#[test]
fn profiled_calls_time_every_step_and_keep_the_tokens_right() {
    let Some(context) = gpu() else { return };
    let (seed, mut rng) = seeded("profiled_calls");
    let (tokens, width, channels) = (7 * 9, 53, 13);
    let weights = weights(&mut rng, width, channels, Some((5, 5)));
    let features = features(&mut rng, 2, tokens, width);
    let layout = Layout::new(tokens, vec![grid(0, 7, 9)]).unwrap();
    let keep = Keep::new(0.2).unwrap();
    let expected = reference::forward(
        &features,
        &weights,
        &layout,
        &layout.queries(keep),
        Default::default(),
    );
    let compressor = Compressor::on_context(weights, context.clone(), Precision::F32).unwrap();
    for association in [Association::Keys, Association::Tokens] {
        let options = Options {
            keep,
            profile: true,
            poison: true,
            kernels: KernelVariant::Tuned,
            association,
            ..Options::default()
        };
        let out = compressor.compress(&features, &layout, &options).unwrap();
        let error = relative_error(&out.tokens, &expected.tokens);
        assert!(
            error < 1e-4,
            "seed {seed}: {association:?}: error {error:e}"
        );
        let profile = out.profile.expect("a profile was asked for");
        let expected_clock = if context.adapter.timestamps {
            Clock::GpuTimestamps
        } else {
            Clock::HostPerPass
        };
        assert_eq!(profile.clock, expected_clock);
        // With a position table, the folded scores add the table's part as a second product.
        let middle: &[&str] = match association {
            Association::Keys => &["keys", "scores"],
            _ => &["fold_w_k", "scores", "scores"],
        };
        let names: Vec<&str> = profile.steps.iter().map(|s| s.name).collect();
        let expected = [
            &["pooling", "queries", "position"][..],
            middle,
            &["softmax", "reduction"],
        ]
        .concat();
        assert_eq!(names, expected);
        assert!(profile
            .steps
            .iter()
            .all(|s| s.seconds > 0.0 && s.flops > 0.0));
        let kernels: f64 = profile.steps.iter().map(|s| s.seconds).sum();
        assert!(profile.call_seconds >= kernels * 0.5, "{profile:?}");
    }
    // Without asking, no profile.
    let out = compressor
        .compress(&features, &layout, &Options::default())
        .unwrap();
    assert!(out.profile.is_none());
}

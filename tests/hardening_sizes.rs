//! Sizes against the real binary: huge numbers in flags and files, the memory the CPU path and
//! the methods hold on tall inputs, presets sized before any per-token table, thread counts
//! bounded, and `compare`'s whole footprint checked before it starts.

mod common;

use common::compress_args as compress;
use common::hardening::{
    features_file, inputs, inputs_of, limited, refused, refused_command, run, run_command, strings,
    tall_inputs, text,
};
use common::{binary, features, folder};
use metacompress::files;

#[test]
fn huge_numbers_are_refused_in_one_line() {
    let dir = folder("huge_numbers");
    let sentinel = dir.join("w.safetensors");
    std::fs::write(&sentinel, b"earlier weights").unwrap();
    let out = text(&sentinel);
    for (args, says) in [
        (
            vec!["init", "--dim", "4294967296", "--dc", "4294967296"],
            &["init"][..],
        ),
        (
            vec!["init", "--dim", "4611686018427387904", "--dc", "4"],
            &["init"][..],
        ),
        (
            vec!["init", "--dim", "18446744073709551615", "--dc", "1"],
            &["init"][..],
        ),
        (
            vec!["init", "--dim", "1000000000", "--dc", "1"],
            &["GiB"][..],
        ),
        (
            vec![
                "init",
                "--dim",
                "16",
                "--dc",
                "4",
                "--pos",
                "4294967296x4294967296",
            ],
            &["position table"][..],
        ),
        (
            vec!["init", "--dim", "16", "--dc", "4", "--pos", "100000x100000"],
            &["position table"][..],
        ),
    ] {
        let mut args = strings(&args);
        args.extend(["--output".into(), out.clone()]);
        let (code, _, stderr) = run(&args);
        assert!(code == 1 || code == 2, "{args:?}: {code} {stderr}");
        refused(&args, code, says, &sentinel);
    }
    for (args, says) in [
        (
            vec!["--runs", "18446744073709551615"],
            &["--runs", "100000"][..],
        ),
        (vec!["--warmup", "18446744073709551615"], &["--warmup"][..]),
        (vec!["--warmup", "0", "--runs", "10000000"], &["--runs"][..]),
        (vec!["--batch", "4611686018427387904"], &["--batch"][..]),
        (vec!["--batch", "1000000"], &["--batch", "GiB"][..]),
    ] {
        let mut all = strings(&["bench", "--workload", "tiny", "--backend", "cpu"]);
        all.extend(strings(&args));
        let (code, _, stderr) = run(&all);
        assert!(code == 1 || code == 2, "{all:?}: {code} {stderr}");
        refused(&all, code, says, &sentinel);
    }
}

#[test]
fn the_cpu_path_and_the_methods_bound_their_memory() {
    // 20000 tokens of width 1 on one 1 x 20000 grid at keep 1: m = n = 20000, a 1.6 GB P.
    let n = 20_000;
    let (dir, weights, input, mut rng) = tall_inputs("bounded_memory", n);
    let output = dir.join("out.safetensors");
    let grid = format!("1x{n}");
    let (code, _, stderr) = run(&compress(
        &weights,
        &input,
        &output,
        &["--grid", &grid, "--keep", "1"],
    ));
    assert_eq!(code, 0, "{stderr}");
    let tokens = files::read_input(&input).unwrap().features();
    assert_eq!(tokens.tokens(), n);
    // The methods that would hold (grid tokens)^2 similarities, or P, past the budget, refuse.
    let big = dir.join("big.safetensors");
    let m = 40_000;
    features_file(&big, m, 1, features(&mut rng, 1, m, 1).values());
    let grid = format!("1x{m}");
    for method in ["tome", "divprune"] {
        let args = compress(
            &weights,
            &big,
            &output,
            &["--grid", &grid, "--keep", "0.001", "--method", method],
        );
        let (code, _, stderr) = run(&args);
        assert!(
            code == 0 || (code == 1 && stderr.contains("GiB")),
            "{method}: {code} {stderr}"
        );
    }
    for method in ["pool", "divprune"] {
        let args = compress(
            &weights,
            &big,
            &output,
            &["--grid", &grid, "--keep", "1", "--method", method],
        );
        refused(&args, 1, &[method, "GiB"], &output);
    }
    // The largest child so far (this binary's tests run a few small ones beside it): the
    // 20000 x 20000 run holds blocks of P, never the 1.6 GB whole.
    #[cfg(unix)]
    {
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: getrusage writes one rusage into the struct passed.
        assert_eq!(
            unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) },
            0
        );
        let peak_mib = usage.ru_maxrss / 1024;
        eprintln!("largest child's peak resident memory: {peak_mib} MiB");
        assert!(peak_mib < 600, "a child peaked at {peak_mib} MiB");
    }
}

#[test]
fn presets_are_sized_before_any_per_token_table() {
    // 30 tokens of width 13; every run under a 1 GiB address space, so a table sized by a
    // preset's n (terabytes, or one gigabyte) would abort instead of being refused.
    let dir = folder("preset_sizes");
    let (weights, input) = inputs_of(&dir, "preset_sizes", 30);
    let output = dir.join("out.safetensors");
    std::fs::write(&output, b"earlier").unwrap();
    let huge: [(&[&str], &[&str]); 3] = [
        (
            &["qwen2-vl:1x1048576x1048576"],
            &["1x1048576x1048576", "tokens"],
        ),
        (
            &["qwen2-vl:1x32768x32768"],
            &["1x32768x32768", "268435456 tokens"],
        ),
        (
            &[
                "llava-next:1048576x1048576",
                "--pinpoints",
                "[[1048320,1048320]]",
            ],
            &["llava-next:1048576x1048576", "tokens"],
        ),
    ];
    for (preset, says) in huge {
        let mut command = limited(1 << 30);
        command.arg("layout").args(preset);
        refused_command(command, 2, says, &output);
        // The same preset against the 30 features: refused as fast, on the CPU path.
        let mut command = limited(1 << 30);
        let mut flags = vec!["--layout", preset[0], "--backend", "cpu"];
        flags.extend(&preset[1..]);
        command.args(compress(&weights, &input, &output, &flags));
        refused_command(command, 2, says, &output);
    }
    // Within the bound but not the features' n: refused with both counts.
    let mut command = limited(1 << 30);
    command.args(compress(
        &weights,
        &input,
        &output,
        &["--layout", "qwen2-vl:4x512x512", "--backend", "cpu"],
    ));
    refused_command(command, 2, &["n = 262144", "n = 30"], &output);
}

#[test]
fn rayon_num_threads_is_bounded_like_threads() {
    let dir = folder("rayon_threads");
    let (weights, input) = inputs(&dir, "rayon_threads");
    let output = dir.join("out.safetensors");
    for (value, says) in [
        ("100000", &["RAYON_NUM_THREADS", "100000", "1024"][..]),
        ("abc", &["RAYON_NUM_THREADS", "abc", "1024"][..]),
        ("-3", &["RAYON_NUM_THREADS", "-3"][..]),
    ] {
        let mut command = binary();
        command.env("RAYON_NUM_THREADS", value).args(compress(
            &weights,
            &input,
            &output,
            &["--backend", "cpu"],
        ));
        refused_command(command, 2, says, &output);
    }
    // In range, 0 (all CPUs, as rayon reads it), or --threads beside it: runs.
    for (value, flags) in [
        ("2", &[][..]),
        ("0", &[][..]),
        ("100000", &["--threads", "2"][..]),
    ] {
        let mut command = binary();
        let mut args = compress(&weights, &input, &output, &["--backend", "cpu"]);
        args.splice(0..0, flags.iter().map(|s| s.to_string()));
        command.env("RAYON_NUM_THREADS", value).args(args);
        let (code, _, stderr, _) = run_command(command);
        assert_eq!(code, 0, "RAYON_NUM_THREADS={value} {flags:?}: {stderr}");
    }
}

#[test]
fn compare_checks_its_whole_footprint_before_it_starts() {
    // 60000 tokens of width 4 on one 1 x 60000 grid: each method's P alone is 1.3 GiB, ToMe's
    // similarities 13.4 GiB; compare would hold every P for its measures and pictures.
    let n = 60_000;
    let (dir, _, input, _) = tall_inputs("compare_footprint", n);
    let sentinel = dir.join("sentinel");
    std::fs::write(&sentinel, b"earlier").unwrap();
    let pictures = dir.join("pictures");
    let grid = format!("1x{n}");
    let mut command = binary();
    command.args(strings(&[
        "compare",
        "--input",
        &text(&input),
        "--grid",
        &grid,
        "--png",
        &text(&pictures),
        "--backend",
        "cpu",
    ]));
    let peak = refused_command(command, 1, &["compare", "GiB", "limit"], &sentinel);
    if let Some(peak) = peak {
        eprintln!("compare's peak resident memory: {peak} MiB");
        assert!(peak < 300, "compare peaked at {peak} MiB before refusing");
    }
    // One method alone is checked as a whole too (P + Y + the copy + the similarities).
    let output = dir.join("out.safetensors");
    let mut command = binary();
    command.args(strings(&[
        "compress",
        "--input",
        &text(&input),
        "--output",
        &text(&output),
        "--grid",
        &grid,
        "--method",
        "tome",
        "--backend",
        "cpu",
    ]));
    let peak = refused_command(command, 1, &["tome", "GiB"], &sentinel);
    assert!(peak.is_none_or(|peak| peak < 300), "{peak:?} MiB");
}

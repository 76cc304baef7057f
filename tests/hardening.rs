//! Hostile and careless input against the real binary (SPEC section 6, v2): planted links and
//! FIFOs at temporary-file names, outputs that are devices or the input itself, huge numbers,
//! overflowing values, duplicate tensor names, signals mid-run, and the one-line messages.
//! Each case: the exit status, one stderr line naming the value, no panic text, the
//! sentinel output byte-identical and no temporary file left.

mod common;

use common::compress_args as compress;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{binary, features, folder, gpu, seeded};
use metacompress::files::{self, TensorOut};
use metacompress::Dtype;

fn text(path: &Path) -> String {
    path.to_str().unwrap().to_string()
}

/// Runs the binary with `args` (killed after 60 s); (exit code, stdout, stderr).
fn run(args: &[String]) -> (i32, String, String) {
    let mut child = binary()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("{args:?} still runs after 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// A refused run: `code`, one stderr line holding every word of `says`, no panic, `sentinel`
/// unchanged and no temporary file beside it.
fn refused(args: &[String], code: i32, says: &[&str], sentinel: &Path) {
    let before = std::fs::read(sentinel).ok();
    let (status, _, stderr) = run(args);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(status, code, "{args:?}: exit {status}: {stderr}");
    assert_eq!(lines.len(), 1, "{args:?}: expected one line: {stderr}");
    for word in says {
        assert!(
            lines[0].contains(word),
            "{args:?}: {:?} lacks {word:?}",
            lines[0]
        );
    }
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{args:?}"
    );
    assert!(
        lines[0].len() < 400,
        "{args:?}: a {}-character line",
        lines[0].len()
    );
    assert_eq!(
        std::fs::read(sentinel).ok(),
        before,
        "{args:?}: the output changed"
    );
    assert_eq!(
        partial_files(sentinel.parent().unwrap()),
        0,
        "{args:?}: a temporary file is left"
    );
}

fn partial_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
        // What the program would have written: regular files (planted links and FIFOs aside).
        .filter(|e| e.file_type().is_ok_and(|kind| kind.is_file()))
        .count()
}

/// Small valid weights (d 13) and features (9 x 13) in `dir`.
fn inputs(dir: &Path, seed_name: &str) -> (PathBuf, PathBuf) {
    inputs_of(dir, seed_name, 9)
}

/// Small valid weights (d 13) and features (`tokens` x 13) in `dir`.
fn inputs_of(dir: &Path, seed_name: &str, tokens: usize) -> (PathBuf, PathBuf) {
    let weights = dir.join("weights.safetensors");
    let (code, _, stderr) = run(&strings(&[
        "init",
        "--dim",
        "13",
        "--dc",
        "5",
        "--output",
        &text(&weights),
    ]));
    assert_eq!(code, 0, "{stderr}");
    let (_, mut rng) = seeded(seed_name);
    let input = dir.join("features.safetensors");
    files::write_input(
        &input,
        &features(&mut rng, 1, tokens, 13),
        false,
        Dtype::F32,
        None,
        None,
    )
    .unwrap();
    (weights, input)
}

#[cfg(unix)]
#[test]
fn planted_links_and_fifos_at_temporary_names_change_nothing() {
    let dir = folder("planted_links");
    let (weights, input) = inputs(&dir, "planted_links");
    let victim = dir.join("victim.txt");
    std::fs::write(&victim, b"precious").unwrap();
    let output = dir.join("out.safetensors");
    // The names earlier versions used (the PID is guessable): links for a range of PIDs, and a
    // FIFO, which would have hung the run.
    for pid in 1..2000u32 {
        let name = dir.join(format!(".out.safetensors.{pid}.partial"));
        std::os::unix::fs::symlink(&victim, &name).unwrap();
    }
    let fifo = dir.join(".out.safetensors.2000.partial");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let (code, _, stderr) = run(&compress(&weights, &input, &output, &[]));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert!(files::read_input(&input).is_ok());
    assert!(std::fs::metadata(&output).unwrap().is_file());
    assert_eq!(partial_files(&dir), 0);
}

#[test]
fn outputs_that_are_not_new_or_regular_files_are_refused() {
    let dir = folder("output_kinds");
    let (weights, input) = inputs(&dir, "output_kinds");
    let sentinel = dir.join("sentinel");
    std::fs::write(&sentinel, b"untouched").unwrap();
    let subfolder = dir.join("a-folder");
    std::fs::create_dir_all(&subfolder).unwrap();
    let device = PathBuf::from("/dev/null");
    for (output, says) in [
        (&subfolder, &["a-folder", "not a regular file"][..]),
        (&input, &["same file as the input"][..]),
        (&weights, &["same file as the weights", "--weights"][..]),
    ] {
        refused(&compress(&weights, &input, output, &[]), 2, says, &sentinel);
    }
    if device.exists() {
        refused(
            &compress(&weights, &input, &device, &[]),
            2,
            &["/dev/null"],
            &sentinel,
        );
        assert!(!std::fs::metadata(&device).unwrap().is_file());
    }
    // The input and weights are intact.
    assert!(files::read_input(&input).is_ok());
    assert!(files::read_weights(&weights).is_ok());
    for command in [
        strings(&[
            "init",
            "--dim",
            "8",
            "--dc",
            "2",
            "--output",
            &text(&subfolder),
        ]),
        strings(&[
            "bench",
            "--workload",
            "tiny",
            "--backend",
            "cpu",
            "--runs",
            "1",
            "--json",
            &text(&subfolder),
        ]),
    ] {
        refused(&command, 2, &["not a regular file"], &sentinel);
    }
}

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

/// A features file of `values` (`rows x width`, F32).
fn features_file(path: &Path, rows: usize, width: usize, values: &[f32]) {
    files::write_tensors(
        path,
        &[TensorOut {
            name: "features",
            shape: vec![rows, width],
            values,
            dtype: Dtype::F32,
        }],
        &[],
    )
    .unwrap();
}

#[test]
fn finite_inputs_that_overflow_are_refused_not_written_as_nan() {
    let dir = folder("overflow");
    let (weights, input) = inputs(&dir, "overflow");
    let base = files::read_input(&input)
        .unwrap()
        .features()
        .values()
        .to_vec();
    let output = dir.join("out.safetensors");
    std::fs::write(&output, b"earlier").unwrap();
    let huge = dir.join("huge.safetensors");
    features_file(
        &huge,
        9,
        13,
        &base.iter().map(|v| v * 1e21).collect::<Vec<_>>(),
    );
    let mut one = base.clone();
    one[20] = 1e30;
    let one_huge = dir.join("one.safetensors");
    features_file(&one_huge, 9, 13, &one);
    let mut backends = vec!["cpu"];
    if gpu().is_some() {
        backends.push("vulkan");
    }
    for file in [&huge, &one_huge] {
        for backend in &backends {
            let args = compress(&weights, file, &output, &["--backend", backend]);
            refused(&args, 1, &["overflowed"], &output);
        }
        // The float64 reference stays finite on the same input.
        let reference = dir.join("reference.safetensors");
        let (code, _, stderr) = run(&compress(
            &weights,
            file,
            &reference,
            &["--backend", "reference"],
        ));
        assert_eq!(code, 0, "{stderr}");
        let args = strings(&[
            "compare",
            "--input",
            &text(file),
            "--weights",
            &text(&weights),
            "--backend",
            "cpu",
        ]);
        let (code, stdout, stderr) = run(&args);
        assert_eq!(code, 1, "compare on {}: {stdout} {stderr}", file.display());
        assert!(
            !stdout.contains("NaN") && stderr.contains("overflowed"),
            "{stderr}"
        );
    }
    let large = dir.join("large.safetensors");
    features_file(
        &large,
        9,
        13,
        &base.iter().map(|v| v * 1e10).collect::<Vec<_>>(),
    );
    refused(
        &compress(&weights, &large, &output, &["--output-dtype", "f16"]),
        1,
        &["65504"],
        &output,
    );
    if let Some(context) = gpu() {
        if context.has_f16() {
            let mut f16_input = base.clone();
            f16_input[7] = 65520.0;
            let past = dir.join("past-f16.safetensors");
            features_file(&past, 9, 13, &f16_input);
            let args = compress(
                &weights,
                &past,
                &output,
                &["--backend", "vulkan", "--precision", "f16"],
            );
            refused(&args, 1, &["65520", "f16"], &output);
        }
    }
}

#[test]
fn a_header_that_names_a_tensor_twice_is_refused() {
    let dir = folder("duplicate_names");
    let (weights, input) = inputs(&dir, "duplicate_names");
    let entry = r#"{"dtype":"F32","shape":[2,13],"data_offsets":[0,104]}"#;
    let mut header = format!(r#"{{"features":{entry},"features":{entry}}}"#).into_bytes();
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(&header);
    bytes.extend(vec![0u8; 104]);
    let twice = dir.join("twice.safetensors");
    std::fs::write(&twice, bytes).unwrap();
    let output = dir.join("out.safetensors");
    refused(
        &compress(&weights, &twice, &output, &[]),
        1,
        &["features", "twice"],
        &output,
    );
    let _ = input;
}

#[test]
fn messages_name_what_is_wrong_in_one_short_line() {
    let dir = folder("messages");
    let (weights, input) = inputs(&dir, "messages");
    let output = dir.join("out.safetensors");
    let sentinel = dir.join("sentinel");
    std::fs::write(&sentinel, b"x").unwrap();
    refused(
        &strings(&["compress"]),
        2,
        &["--input", "--output"],
        &sentinel,
    );
    refused(
        &strings(&[]),
        2,
        &["compress", "init", "subcommand"],
        &sentinel,
    );
    let long = "7".repeat(100_000); // near the longest argument the OS passes
    refused(
        &compress(&weights, &input, &output, &["--grid", &long]),
        2,
        &["--grid", "characters"],
        &sentinel,
    );
    refused(
        &compress(
            &weights,
            &input,
            &output,
            &["--layout", "llava-next:\u{1b}[31m9x9"],
        ),
        2,
        &["\\u{1b}"],
        &sentinel,
    );
    for threads in ["0", "1025", "18446744073709551615"] {
        let args = compress(&weights, &input, &output, &["--threads", threads]);
        refused(&args, 2, &["--threads", threads, "1 to 1024"], &sentinel);
    }
    let (code, _, stderr) = run(&compress(&weights, &input, &output, &["--threads", "1"]));
    assert_eq!(code, 0, "{stderr}");
    let (code, stdout, stderr) = run(&compress(&weights, &input, &output, &["--keep", "1e-300"]));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("keep 1e-300") && stdout.len() < 400,
        "{stdout}"
    );
    // A weights file with an empty position table reads sensibly.
    let pmeta = files::read_weights(&weights).unwrap();
    let empty = dir.join("empty-table.safetensors");
    files::write_tensors(
        &empty,
        &[
            TensorOut {
                name: "w_q",
                shape: vec![13, 5],
                values: pmeta.w_q(),
                dtype: Dtype::F32,
            },
            TensorOut {
                name: "w_k",
                shape: vec![13, 5],
                values: pmeta.w_k(),
                dtype: Dtype::F32,
            },
            TensorOut {
                name: "omega",
                shape: vec![5],
                values: pmeta.omega(),
                dtype: Dtype::F32,
            },
            TensorOut {
                name: "pos_embed",
                shape: vec![0, 0, 13],
                values: &[],
                dtype: Dtype::F32,
            },
        ],
        &[],
    )
    .unwrap();
    refused(
        &compress(&empty, &input, &output, &[]),
        1,
        &["pos_embed", "[0, 0, 13]", "at least 1"],
        &sentinel,
    );
}

/// A folder with `n` standard-normal tokens of width 1 and `init` weights for them.
fn tall_inputs(test: &str, n: usize) -> (PathBuf, PathBuf, PathBuf, rand_chacha::ChaCha8Rng) {
    let dir = folder(test);
    let (_, mut rng) = seeded(test);
    let input = dir.join("tall.safetensors");
    features_file(&input, n, 1, features(&mut rng, 1, n, 1).values());
    let weights = dir.join("w.safetensors");
    let init = [
        "init",
        "--dim",
        "1",
        "--dc",
        "1",
        "--output",
        &text(&weights),
    ];
    let (code, _, stderr) = run(&strings(&init));
    assert_eq!(code, 0, "{stderr}");
    (dir, weights, input, rng)
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

#[cfg(unix)]
#[test]
fn a_signal_mid_run_leaves_no_temporary_file() {
    let n = 25_000;
    let (dir, weights, input, _) = tall_inputs("signal", n);
    let output = dir.join("out.safetensors");
    let grid = format!("1x{n}");
    let mut child = binary()
        .args(compress(
            &weights,
            &input,
            &output,
            &["--grid", &grid, "--keep", "1"],
        ))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    assert!(Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap()
        .success());
    let status = child.wait().unwrap();
    // 128 + SIGTERM: the handler that removes the temporary file ran and exited.
    assert_eq!(status.code(), Some(143), "{status:?}");
    assert_eq!(partial_files(&dir), 0);
    assert!(!output.exists());
}

#[test]
fn bad_layouts_are_refused_in_one_line() {
    // 30 tokens of width 13.
    let dir = folder("bad_layouts");
    let (weights, input) = inputs_of(&dir, "bad_layouts", 30);
    let output = dir.join("out.safetensors");
    std::fs::write(&output, b"earlier").unwrap();
    let cases: Vec<(&str, Vec<&str>, &[&str])> = vec![
        (
            "stride below the width",
            vec!["--grid", "3x4@0/3"],
            &["3x4@0/3", "stride"],
        ),
        ("zero stride", vec!["--grid", "3x4@0/0"], &["stride"]),
        (
            "a token in two grids",
            vec!["--grid", "3x2@0/5", "--grid", "3x2@1/5"],
            &["overlap", "token 1"],
        ),
        (
            "a row past n",
            vec!["--grid", "5x4@10/5"],
            &["5x4@10/5", "0..30"],
        ),
        (
            "not a stride",
            vec!["--grid", "3x4@0/x"],
            &["3x4@0/x", "STRIDE"],
        ),
        (
            "a preset that makes no image",
            vec!["--layout", "llava-next:0x667"],
            &["width 0"],
        ),
        (
            "an odd qwen2-vl side",
            vec!["--layout", "qwen2-vl:1x5x6"],
            &["h = 5", "even"],
        ),
        (
            "an unknown preset",
            vec!["--layout", "llava-9"],
            &["llava-9", "preset"],
        ),
        (
            "a preset of another n",
            vec!["--layout", "llava-1.5"],
            &["n = 576", "n = 30"],
        ),
        (
            "bad pinpoints",
            vec!["--layout", "llava-next:10x10", "--pinpoints", "[[300,336]]"],
            &["[300, 336]", "336"],
        ),
    ];
    for (what, extra, says) in cases {
        let args = compress(&weights, &input, &output, &extra);
        eprintln!("{what}");
        refused(&args, 2, says, &output);
    }
    // `layout` itself refuses the same way.
    refused(
        &strings(&["layout", "qwen2-vl:1x28"]),
        2,
        &["qwen2-vl:1x28"],
        &output,
    );
}

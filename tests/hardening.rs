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

use common::{binary, features, folder, gpu, seeded, vulkan};
use metacompress::files::{self, TensorOut};
use metacompress::Dtype;

fn text(path: &Path) -> String {
    path.to_str().unwrap().to_string()
}

/// Runs the binary with `args` (killed after 60 s); (exit code, stdout, stderr).
fn run(args: &[String]) -> (i32, String, String) {
    let mut command = binary();
    command.args(args);
    let (code, stdout, stderr, _) = run_command(command);
    (code, stdout, stderr)
}

/// Runs `command` (killed after 60 s); (exit code or minus the signal that ended it, stdout,
/// stderr, the child's own peak resident memory in MiB where the system says).
// The child is reaped by wait4 (which also gives its own peak memory), not `Child::wait`.
#[allow(clippy::zombie_processes)]
fn run_command(mut command: Command) -> (i32, String, String, Option<u64>) {
    use std::io::Read as _;
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The pipes drain on threads, so a talkative child never blocks on a full pipe.
    let mut stdout_pipe = child.stdout.take().unwrap();
    let mut stderr_pipe = child.stderr.take().unwrap();
    let stdout = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout_pipe.read_to_string(&mut text);
        text
    });
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr_pipe.read_to_string(&mut text);
        text
    });
    let started = Instant::now();
    let (code, peak) = loop {
        #[cfg(unix)]
        {
            let (mut status, mut usage) = (0, unsafe { std::mem::zeroed::<libc::rusage>() });
            // SAFETY: wait4 writes one status and one rusage; the pid is our own child's.
            let reaped =
                unsafe { libc::wait4(child.id() as i32, &mut status, libc::WNOHANG, &mut usage) };
            if reaped == child.id() as i32 {
                let code = if libc::WIFEXITED(status) {
                    libc::WEXITSTATUS(status)
                } else {
                    -libc::WTERMSIG(status)
                };
                break (code, Some(usage.ru_maxrss as u64 / 1024));
            }
        }
        #[cfg(not(unix))]
        if let Some(status) = child.try_wait().unwrap() {
            break (status.code().unwrap_or(-1), None);
        }
        if started.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("{command:?} still runs after 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (code, stdout.join().unwrap(), stderr.join().unwrap(), peak)
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// A refused run: `code`, one stderr line holding every word of `says`, no panic, `sentinel`
/// unchanged and no temporary file beside it.
fn refused(args: &[String], code: i32, says: &[&str], sentinel: &Path) {
    let mut command = binary();
    command.args(args);
    refused_command(command, code, says, sentinel);
}

/// `refused` for a command with its own environment or limits; the child's peak memory (MiB).
fn refused_command(command: Command, code: i32, says: &[&str], sentinel: &Path) -> Option<u64> {
    let before = std::fs::read(sentinel).ok();
    let args = format!("{command:?}");
    let (status, _, stderr, peak) = run_command(command);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(status, code, "{args}: exit {status}: {stderr}");
    assert_eq!(lines.len(), 1, "{args}: expected one line: {stderr}");
    for word in says {
        assert!(
            lines[0].contains(word),
            "{args}: {:?} lacks {word:?}",
            lines[0]
        );
    }
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{args}"
    );
    assert!(
        lines[0].len() < 400,
        "{args}: a {}-character line",
        lines[0].len()
    );
    assert_eq!(
        std::fs::read(sentinel).ok(),
        before,
        "{args}: the output changed"
    );
    assert_eq!(
        partial_files(sentinel.parent().unwrap()),
        0,
        "{args}: a temporary file is left"
    );
    peak
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
    if vulkan().is_some() {
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
    if let Some(context) = vulkan() {
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

/// The binary with its address space capped at `bytes` (a huge allocation fails at once).
fn limited(bytes: u64) -> Command {
    let mut command = binary();
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt as _;
        // SAFETY: setrlimit is async-signal-safe; it runs in the child before exec.
        unsafe {
            command.pre_exec(move || {
                let limit = libc::rlimit {
                    rlim_cur: bytes,
                    rlim_max: bytes,
                };
                if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    command
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

/// Set in the child run of `a_mapped_input_truncated_mid_read_exits_1_in_one_line`.
const TRUNCATE_CHILD: &str = "METACOMPRESS_TEST_TRUNCATE_CHILD";

#[cfg(unix)]
#[test]
fn a_mapped_input_truncated_mid_read_exits_1_in_one_line() {
    if let Some(path) = std::env::var_os(TRUNCATE_CHILD) {
        // The child: map the input, truncate it as another program would, read it.
        let path = PathBuf::from(path);
        files::exit_on_changed_mapped_file();
        let input = files::read_input(&path).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(4096)
            .unwrap();
        let metacompress::HostValues::F32(values) = input.tokens().values() else {
            panic!("f32 features read in place")
        };
        let sum: f32 = values.iter().sum();
        panic!("read {sum} from a truncated map without a signal");
    }
    let dir = folder("truncated_map");
    let (_, mut rng) = seeded("truncated_map");
    let input = dir.join("big.safetensors");
    features_file(&input, 256, 257, features(&mut rng, 1, 256, 257).values());
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--exact",
            "a_mapped_input_truncated_mid_read_exits_1_in_one_line",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(TRUNCATE_CHILD, &input);
    let (code, _, stderr, _) = run_command(command);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("big.safetensors")
            && lines[0].contains("changed while it was being read"),
        "{stderr}"
    );
}

#[test]
fn a_mapped_input_rewritten_in_place_is_caught_before_writing() {
    let dir = folder("rewritten_map");
    let (_, mut rng) = seeded("rewritten_map");
    let path = dir.join("input.safetensors");
    features_file(&path, 16, 9, features(&mut rng, 1, 16, 9).values());
    let input = files::read_input(&path).unwrap();
    input.check_unchanged().unwrap();
    // Rewritten at the same size (no signal): caught by its modification time.
    let bytes = std::fs::read(&path).unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    std::io::Write::write_all(&mut &file, &bytes).unwrap();
    file.set_modified(std::time::SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    let error = input.check_unchanged().unwrap_err().to_string();
    assert!(
        error.contains("input.safetensors") && error.contains("changed while it was being read"),
        "{error}"
    );
    // A file replaced by a rename leaves the mapped one intact: nothing changed for this read.
    let replaced = files::read_input(&path).unwrap();
    let other = dir.join("other.safetensors");
    features_file(&other, 16, 9, features(&mut rng, 1, 16, 9).values());
    std::fs::rename(&other, &path).unwrap();
    replaced.check_unchanged().unwrap();
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

#[test]
fn smaller_messages_say_the_right_thing() {
    let dir = folder("smaller_messages");
    let (weights, input) = inputs(&dir, "smaller_messages");
    let output = dir.join("out.safetensors");
    std::fs::write(&output, b"earlier").unwrap();
    // A 5000-character kernel level: cut once, its quote closed.
    let mut command = binary();
    command
        .env("METACOMPRESS_CPU_KERNELS", "k".repeat(5000))
        .args(compress(&weights, &input, &output, &["--backend", "cpu"]));
    let (code, _, stderr, _) = run_command(command);
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert_eq!(stderr.matches("characters)").count(), 1, "{stderr}");
    assert_eq!(
        stderr.matches('"').count() % 2,
        0,
        "an open quote: {stderr}"
    );
    assert!(stderr.contains("(5000 characters)"), "{stderr}");
    // An empty [0, 13] features tensor is named by its own shape.
    let empty = dir.join("empty.safetensors");
    features_file(&empty, 0, 13, &[]);
    refused(
        &compress(&weights, &empty, &output, &["--backend", "cpu"]),
        1,
        &["[0, 13]", "empty"],
        &output,
    );
    let (code, _, stderr) = run(&compress(&weights, &empty, &output, &["--backend", "cpu"]));
    assert!(code == 1 && !stderr.contains("[1, 0, 13]"), "{stderr}");
    // Grids metadata out of range: the file's fault, exit 1.
    let (_, mut rng) = seeded("smaller_messages_grids");
    let gridded = dir.join("gridded.safetensors");
    files::write_input(
        &gridded,
        &features(&mut rng, 1, 9, 13),
        false,
        Dtype::F32,
        Some(r#"[[0,5,5]]"#),
        None,
    )
    .unwrap();
    refused(
        &compress(&weights, &gridded, &output, &["--backend", "cpu"]),
        1,
        &["gridded.safetensors", "grids", "5x5"],
        &output,
    );
    // visionzip on a file without attention: the file's fault, exit 1.
    refused(
        &compress(
            &weights,
            &input,
            &output,
            &["--method", "visionzip", "--backend", "cpu"],
        ),
        1,
        &["features.safetensors", "visionzip", "attention"],
        &output,
    );
}

#[test]
fn an_empty_xdg_runtime_dir_is_as_good_as_unset() {
    if gpu().is_none() {
        return;
    }
    let mut command = binary();
    command.env("XDG_RUNTIME_DIR", "").arg("devices");
    let (code, _, stderr, _) = run_command(command);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.trim().is_empty(), "noise on stderr: {stderr}");
}

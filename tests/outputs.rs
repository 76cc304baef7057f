//! What every writer (`compress`, `init`, `compare --json/--png`, `demo --save`, `bench
//! --json`) does with its outputs, against the real binary (SPEC section 6, issue 20): an
//! output that is one of the inputs or cannot be written is refused before any work, a
//! signal after the outputs are in place is a success, modes follow the umask or the replaced
//! file, long names work, identical runs write identical bytes, and a set of outputs is
//! written whole or not at all.

mod common;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{binary, features, folder, seeded};
use metacompress::files::{self, TensorOut};
use metacompress::Dtype;

/// What a run gave back.
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs the binary with `args` and the environment `envs` (killed after 120 s).
fn run_with(args: &[OsString], envs: &[(&str, &str)], setup: Option<fn()>) -> Ran {
    let mut command = binary();
    command
        .args(args)
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    #[cfg(unix)]
    if let Some(setup) = setup {
        use std::os::unix::process::CommandExt as _;
        // SAFETY: the closure only makes async-signal-safe calls (umask, setrlimit, signal).
        unsafe {
            command.pre_exec(move || {
                setup();
                Ok(())
            });
        }
    }
    #[cfg(not(unix))]
    let _ = setup;
    finish(command.spawn().unwrap(), args)
}

fn finish(mut child: Child, args: &[OsString]) -> Ran {
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(120) {
            child.kill().unwrap();
            panic!("{args:?} still runs after 120 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    Ran {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn run(args: &[OsString]) -> Ran {
    run_with(args, &[], None)
}

/// Arguments from strings and paths.
fn args<const N: usize>(items: [&dyn AsRef<std::ffi::OsStr>; N]) -> Vec<OsString> {
    items.iter().map(|item| item.as_ref().to_owned()).collect()
}

/// A refused run: `code`, one stderr line holding every word of `says`, nothing on stdout
/// (no work done), no panic, and `kept` (files) byte-identical.
fn refused(args: &[OsString], code: i32, says: &[&str], kept: &[&Path]) {
    let before: Vec<Option<Vec<u8>>> = kept.iter().map(|p| std::fs::read(p).ok()).collect();
    let ran = run(args);
    let lines: Vec<&str> = ran.stderr.lines().collect();
    assert_eq!(
        ran.code, code,
        "{args:?}: exit {}: {}",
        ran.code, ran.stderr
    );
    assert_eq!(
        lines.len(),
        1,
        "{args:?}: expected one line: {}",
        ran.stderr
    );
    for word in says {
        assert!(
            lines[0].contains(word),
            "{args:?}: {:?} lacks {word:?}",
            lines[0]
        );
    }
    assert!(!ran.stderr.contains("panicked"), "{args:?}");
    assert_eq!(ran.stdout, "", "{args:?}: refused after doing work");
    let after: Vec<Option<Vec<u8>>> = kept.iter().map(|p| std::fs::read(p).ok()).collect();
    assert!(before == after, "{args:?}: a file changed");
}

/// The temporary files left in `dir`.
fn partial_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".partial"))
        .collect()
}

/// Weights (d 13, d_c 5), features (9 x 13) and probes (4 x 13) in `dir`.
fn inputs(dir: &Path, test: &str) -> (PathBuf, PathBuf, PathBuf) {
    let weights = dir.join("weights.safetensors");
    let ran = run(&args([
        &"init",
        &"--dim",
        &"13",
        &"--dc",
        &"5",
        &"--output",
        &weights,
    ]));
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let (_, mut rng) = seeded(test);
    let input = dir.join("features.safetensors");
    files::write_input(
        &input,
        &features(&mut rng, 1, 9, 13),
        false,
        Dtype::F32,
        None,
        None,
    )
    .unwrap();
    let probes = dir.join("probes.safetensors");
    let values = common::normal(&mut rng, 4 * 13, 1.0);
    files::write_tensors(
        &probes,
        &[TensorOut {
            name: "probes",
            shape: vec![4, 13],
            values: &values,
            dtype: Dtype::F32,
        }],
        &[],
    )
    .unwrap();
    (weights, input, probes)
}

/// `compare` on the CPU path with these files and `extra` flags.
fn compare(weights: &Path, input: &Path, extra: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<OsString> {
    let mut all = args([
        &"compare",
        &"--backend",
        &"cpu",
        &"--weights",
        &weights,
        &"--input",
        &input,
        &"--keep",
        &"0.5",
    ]);
    all.extend(extra.iter().map(|item| item.as_ref().to_owned()));
    all
}

fn compress(weights: &Path, input: &Path, output: &Path) -> Vec<OsString> {
    common::compress_args(weights, input, output, &[])
        .into_iter()
        .map(OsString::from)
        .collect()
}

/// Item 1: an output that is an input (the same path, a hard link, a symbolic link) is
/// refused before any work, with the input's role named.
#[cfg(unix)]
#[test]
fn outputs_that_are_inputs_are_refused_before_any_work() {
    let dir = folder("outputs_inputs");
    let (weights, input, probes) = inputs(&dir, "outputs_inputs");
    let kept = [weights.as_path(), input.as_path(), probes.as_path()];
    let hard_link = dir.join("hard-link.safetensors");
    std::fs::hard_link(&input, &hard_link).unwrap();
    let symbolic_link = dir.join("symbolic-link.safetensors");
    std::os::unix::fs::symlink(&weights, &symbolic_link).unwrap();
    let with_probes = |extra: &[&dyn AsRef<std::ffi::OsStr>]| {
        let mut all = compare(&weights, &input, &[&"--probes", &probes]);
        all.extend(extra.iter().map(|item| item.as_ref().to_owned()));
        all
    };
    for (output, role) in [
        (&input, "--input"),
        (&weights, "--weights"),
        (&probes, "--probes"),
        (&hard_link, "--input"),
        (&symbolic_link, "--weights"),
    ] {
        refused(
            &with_probes(&[&"--json", output]),
            2,
            &["--json", role, "same file"],
            &kept,
        );
        if role != "--probes" {
            refused(
                &compress(&weights, &input, output),
                2,
                &["--output", role, "same file"],
                &kept,
            );
        }
    }
    // A picture's name in the --png folder that is an input.
    let pictures = dir.join("pictures");
    std::fs::create_dir(&pictures).unwrap();
    let named_like_a_picture = pictures.join("pool-grid0.png");
    std::fs::copy(&input, &named_like_a_picture).unwrap();
    refused(
        &compare(&weights, &named_like_a_picture, &[&"--png", &pictures]),
        2,
        &["--png", "--input", "pool-grid0.png"],
        &[&named_like_a_picture],
    );
    // --json inside nothing it reads: it works.
    let report = dir.join("report.json");
    let ran = run(&with_probes(&[&"--json", &report]));
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert!(files::read_input(&input).is_ok());
    assert!(files::read_weights(&weights).is_ok());
    assert!(files::read_probes(&probes, 13).is_ok());
    assert!(partial_files(&dir).is_empty());
}

/// Item 5: SIGTERM once the output is in place (the run paused after its work by the
/// documented test hook) exits 0 with the output whole, not 143.
#[cfg(unix)]
#[test]
fn a_signal_after_the_outputs_are_in_place_reports_success() {
    let dir = folder("outputs_signal");
    let output = dir.join("weights.safetensors");
    let child = binary()
        .args(args([
            &"init",
            &"--dim",
            &"16",
            &"--dc",
            &"4",
            &"--output",
            &output,
        ]))
        .env("METACOMPRESS_TEST_PAUSE_BEFORE_EXIT_MS", "20000")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !output.exists() {
        assert!(started.elapsed() < Duration::from_secs(60), "no output");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap()
        .success());
    let ran = finish(child, &[]);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the signal was not handled"
    );
    assert_eq!(ran.code, 0, "output in place, yet: {}", ran.stderr);
    assert!(files::read_weights(&output).is_ok());
    assert!(partial_files(&dir).is_empty());
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[cfg(unix)]
fn umask_022() {
    // SAFETY: umask only sets the process's mask.
    unsafe { libc::umask(0o022) };
}

#[cfg(unix)]
fn umask_077() {
    // SAFETY: as above.
    unsafe { libc::umask(0o077) };
}

/// Item 7: new outputs get 0666 & ~umask; a replaced output keeps its mode.
#[cfg(unix)]
#[test]
fn new_outputs_follow_the_umask_and_replaced_ones_keep_their_mode() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = folder("outputs_modes");
    let (weights, input, _) = inputs(&dir, "outputs_modes");
    let output = dir.join("tokens.safetensors");
    let init = |path: &Path| args([&"init", &"--dim", &"8", &"--dc", &"2", &"--output", &path]);
    let report = dir.join("report.json");
    let pictures = dir.join("pictures");
    let saved = dir.join("demo");
    let writers: Vec<(Vec<OsString>, Vec<PathBuf>)> = vec![
        (compress(&weights, &input, &output), vec![output.clone()]),
        (
            init(&dir.join("init.safetensors")),
            vec![dir.join("init.safetensors")],
        ),
        (
            compare(&weights, &input, &[&"--json", &report, &"--png", &pictures]),
            vec![report.clone(), pictures.join("pool-grid0.png")],
        ),
        (
            args([&"demo", &"--backend", &"cpu", &"--save", &saved]),
            vec![saved.join("demo-weights.safetensors")],
        ),
    ];
    for (command, written) in &writers {
        let ran = run_with(command, &[], Some(umask_022));
        assert_eq!(ran.code, 0, "{}", ran.stderr);
        for path in written {
            assert_eq!(mode(path), 0o644, "{path:?} under umask 022");
        }
        // Replaced under a stricter umask: the file keeps the mode it had.
        for path in written {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o664)).unwrap();
        }
        let ran = run_with(command, &[], Some(umask_077));
        assert_eq!(ran.code, 0, "{}", ran.stderr);
        for path in written {
            assert_eq!(mode(path), 0o664, "{path:?} replaced");
        }
    }
    // A new file under umask 077 is private.
    let private = dir.join("private.safetensors");
    let ran = run_with(&init(&private), &[], Some(umask_077));
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(mode(&private), 0o600);
}

/// Item 8: an output name of up to 255 bytes is written; an output whose folder cannot take
/// it is refused before any work, exit 2.
#[cfg(unix)]
#[test]
fn long_names_are_written_and_unwritable_folders_refused_first() {
    let dir = folder("outputs_long_names");
    let (weights, input, _) = inputs(&dir, "outputs_long_names");
    for length in [240, 250, 255] {
        let output = dir.join("t".repeat(length - 12) + ".safetensors");
        let ran = run(&compress(&weights, &input, &output));
        assert_eq!(ran.code, 0, "{length} bytes: {}", ran.stderr);
        assert!(files::read_input(&input).is_ok());
        let ran = run(&args([
            &"init",
            &"--dim",
            &"8",
            &"--dc",
            &"2",
            &"--output",
            &output,
        ]));
        assert_eq!(ran.code, 0, "{length} bytes: {}", ran.stderr);
    }
    // Too long for the file system, a missing folder, a folder no one may write in (/proc,
    // even as root), a "folder" that is a file: refused before reading any input.
    let missing_input = dir.join("no-such-input.safetensors");
    let too_long = dir.join("t".repeat(256));
    let missing = dir.join("no-such-folder").join("out.safetensors");
    let file = dir.join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let mut cases = vec![
        (too_long, "too long"),
        (missing, "no-such-folder"),
        (file.join("out.safetensors"), "a-file"),
    ];
    if Path::new("/proc/self").exists() {
        cases.push((PathBuf::from("/proc/out.safetensors"), "/proc"));
    }
    for (output, says) in &cases {
        refused(
            &compress(&weights, &missing_input, output),
            2,
            &["--output", says],
            &[&file],
        );
        refused(
            &args([&"init", &"--dim", &"8", &"--dc", &"2", &"--output", output]),
            2,
            &["--output", says],
            &[&file],
        );
        refused(
            &compare(&weights, &input, &[&"--json", output]),
            2,
            &["--json", says],
            &[&file],
        );
    }
    assert!(partial_files(&dir).is_empty());
}

/// Item 9: the same inputs and options give the same bytes, in every writer.
#[test]
fn identical_runs_write_identical_bytes() {
    let dir = folder("outputs_reproducible");
    let (weights, input, _) = inputs(&dir, "outputs_reproducible");
    let mut runs: Vec<Vec<(String, Vec<u8>)>> = Vec::new();
    for attempt in 0..3 {
        let out = dir.join(format!("run{attempt}"));
        std::fs::create_dir(&out).unwrap();
        let tokens = out.join("tokens.safetensors");
        let mut command = compress(&weights, &input, &tokens);
        command.push("--save-projection".into());
        for command in [
            command,
            args([
                &"init",
                &"--dim",
                &"8",
                &"--dc",
                &"2",
                &"--pos",
                &"3x3",
                &"--output",
                &out.join("init.safetensors"),
            ]),
            args([&"demo", &"--backend", &"cpu", &"--save", &out.join("demo")]),
            compare(
                &weights,
                &input,
                &[
                    &"--json",
                    &out.join("report.json"),
                    &"--png",
                    &out.join("pictures"),
                ],
            ),
        ] {
            let ran = run(&command);
            assert_eq!(ran.code, 0, "{}", ran.stderr);
        }
        let mut written = Vec::new();
        for path in walk(&out) {
            let mut bytes = std::fs::read(&path).unwrap();
            if path.extension().is_some_and(|e| e == "json") {
                // The one measurement in a report: the methods' times.
                let mut report: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                for row in report["methods"].as_array_mut().unwrap() {
                    row["seconds"] = serde_json::Value::from(0.0);
                }
                bytes = serde_json::to_vec(&report).unwrap();
            }
            written.push((
                path.strip_prefix(&out).unwrap().display().to_string(),
                bytes,
            ));
        }
        runs.push(written);
    }
    assert!(
        runs[0].len() >= 8,
        "{:?}",
        runs[0].iter().map(|r| &r.0).collect::<Vec<_>>()
    );
    for (attempt, written) in runs.iter().enumerate().skip(1) {
        assert_eq!(written.len(), runs[0].len());
        for ((name, bytes), (_, first)) in written.iter().zip(&runs[0]) {
            assert!(bytes == first, "run {attempt}: {name} differs from run 0");
        }
    }
}

/// Every file under `dir`, sorted.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else {
            found.push(path);
        }
    }
    found.sort();
    found
}

/// Item 10: a `--png` or `--save` path that is not a folder (a file, a link to nothing) is
/// refused before any work.
#[cfg(unix)]
#[test]
fn folder_outputs_that_are_not_folders_are_refused_before_any_work() {
    let dir = folder("outputs_folders");
    let (weights, input, _) = inputs(&dir, "outputs_folders");
    let file = dir.join("a-file.png");
    std::fs::write(&file, b"mine").unwrap();
    let dangling = dir.join("dangling");
    std::os::unix::fs::symlink(dir.join("nowhere"), &dangling).unwrap();
    let under_a_file = file.join("pictures");
    for (path, says) in [
        (&file, "a-file.png"),
        (&dangling, "dangling"),
        (&under_a_file, "a-file.png"),
    ] {
        refused(
            &compare(&weights, &input, &[&"--png", path]),
            2,
            &["--png", says],
            &[&file],
        );
        refused(
            &args([&"demo", &"--backend", &"cpu", &"--save", path]),
            2,
            &["--save", says],
            &[&file],
        );
    }
    assert!(std::fs::symlink_metadata(&dangling).is_ok());
    assert!(!dir.join("nowhere").exists());
}

#[cfg(unix)]
fn small_disk() {
    // SAFETY: setrlimit and signal are async-signal-safe; ignoring SIGXFSZ makes a write past
    // the limit fail with EFBIG (as on a full disk) instead of ending the process.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let limit = libc::rlimit {
            rlim_cur: 3 << 20,
            rlim_max: 3 << 20,
        };
        libc::setrlimit(libc::RLIMIT_FSIZE, &limit);
    }
}

/// Item 10: `demo --save` that fails to write one of its files (here: a 3 MiB file-size
/// limit, which the 12 MB anyres features pass, as a full disk would) leaves none of them.
#[cfg(unix)]
#[test]
fn a_demo_save_that_fails_leaves_none_of_its_files() {
    let dir = folder("outputs_demo_set");
    let saved = dir.join("demo");
    let ran = run_with(
        &args([&"demo", &"--backend", &"cpu", &"--save", &saved]),
        &[],
        Some(small_disk),
    );
    assert_eq!(ran.code, 1, "{}", ran.stderr);
    assert_eq!(ran.stderr.lines().count(), 1, "{}", ran.stderr);
    assert!(
        ran.stderr.contains("demo-anyres-features"),
        "{}",
        ran.stderr
    );
    let left: Vec<PathBuf> = if saved.exists() {
        walk(&saved)
    } else {
        Vec::new()
    };
    assert!(left.is_empty(), "left behind: {left:?}");
    // An existing set is kept whole when a later run fails.
    let ran = run(&args([&"demo", &"--backend", &"cpu", &"--save", &saved]));
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let before: Vec<Vec<u8>> = walk(&saved)
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    assert_eq!(before.len(), 3);
    let ran = run_with(
        &args([&"demo", &"--backend", &"cpu", &"--save", &saved]),
        &[],
        Some(small_disk),
    );
    assert_eq!(ran.code, 1, "{}", ran.stderr);
    let after: Vec<Vec<u8>> = walk(&saved)
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    assert!(before == after, "a failed run changed the saved set");
}

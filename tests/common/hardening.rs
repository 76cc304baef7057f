//! What the hardening tests share: the binary run (its exit, output and peak memory), a
//! refusal checked (one line, no panic, the sentinel output untouched, no temporary file), and
//! small input files.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{binary, features, folder, seeded};
use metacompress::files::{self, TensorOut};
use metacompress::Dtype;

pub fn text(path: &Path) -> String {
    path.to_str().unwrap().to_string()
}

/// Runs the binary with `args` (killed after 60 s); (exit code, stdout, stderr).
pub fn run(args: &[String]) -> (i32, String, String) {
    let mut command = binary();
    command.args(args);
    let (code, stdout, stderr, _) = run_command(command);
    (code, stdout, stderr)
}

/// Runs `command` (killed after 60 s); (exit code or minus the signal that ended it, stdout,
/// stderr, the child's own peak resident memory in MiB where the system says).
// The child is reaped by wait4 (which also gives its own peak memory), not `Child::wait`.
#[allow(clippy::zombie_processes)]
pub fn run_command(mut command: Command) -> (i32, String, String, Option<u64>) {
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

pub fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// A refused run: `code`, one stderr line holding every word of `says`, no panic, `sentinel`
/// unchanged and no temporary file beside it.
pub fn refused(args: &[String], code: i32, says: &[&str], sentinel: &Path) {
    let mut command = binary();
    command.args(args);
    refused_command(command, code, says, sentinel);
}

/// `refused` for a command with its own environment or limits; the child's peak memory (MiB).
pub fn refused_command(command: Command, code: i32, says: &[&str], sentinel: &Path) -> Option<u64> {
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

pub fn partial_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
        // What the program would have written: regular files (planted links and FIFOs aside).
        .filter(|e| e.file_type().is_ok_and(|kind| kind.is_file()))
        .count()
}

/// Small valid weights (d 13) and features (9 x 13) in `dir`.
pub fn inputs(dir: &Path, seed_name: &str) -> (PathBuf, PathBuf) {
    inputs_of(dir, seed_name, 9)
}

/// Small valid weights (d 13) and features (`tokens` x 13) in `dir`.
pub fn inputs_of(dir: &Path, seed_name: &str, tokens: usize) -> (PathBuf, PathBuf) {
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

/// A features file of `values` (`rows x width`, F32).
pub fn features_file(path: &Path, rows: usize, width: usize, values: &[f32]) {
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

/// A folder with `n` standard-normal tokens of width 1 and `init` weights for them.
pub fn tall_inputs(test: &str, n: usize) -> (PathBuf, PathBuf, PathBuf, rand_chacha::ChaCha8Rng) {
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

/// The binary with its address space capped at `bytes` (a huge allocation fails at once).
pub fn limited(bytes: u64) -> Command {
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

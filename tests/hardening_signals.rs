//! What changes under a run: a signal mid-run (no temporary file left), and a mapped input
//! truncated (SIGBUS: exit 1 in one line) or rewritten in place (caught before writing).

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::compress_args as compress;
use common::hardening::{features_file, partial_files, run_command, tall_inputs};
use common::{binary, features, folder, seeded};
use metacompress::files;

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

//! Outputs against the real binary (SPEC section 6, v2): links and FIFOs planted at the
//! temporary files' names, and outputs that are devices, folders or the input itself. Each
//! case: the exit status, one stderr line naming the value, the sentinel output byte-identical
//! and no temporary file left.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::compress_args as compress;
use common::folder;
use common::hardening::{inputs, partial_files, refused, run, strings, text};
use metacompress::files;

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

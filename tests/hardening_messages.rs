//! The one-line messages of the real binary: each names what is wrong and what was expected,
//! bad layouts included, with no panic text; an empty XDG_RUNTIME_DIR is as good as unset.

mod common;

use common::compress_args as compress;
use common::hardening::{features_file, inputs, inputs_of, refused, run, run_command, strings};
use common::{binary, features, folder, gpu, seeded};
use metacompress::files::{self, TensorOut};
use metacompress::Dtype;

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

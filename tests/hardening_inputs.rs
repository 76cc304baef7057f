//! Input files that are valid safetensors but no valid input, against the real binary: finite
//! values whose results overflow (refused, never written as NaN), and a header that names a
//! tensor twice.

mod common;

use common::compress_args as compress;
use common::hardening::{features_file, inputs, refused, run, strings, text};
use common::{folder, vulkan};
use metacompress::files;

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

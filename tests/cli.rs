//! The real binary: a worked run checked against the reference, and every class of bad input
//! checked for exit status, a one-line message naming the value, and an untouched output file.

mod common;

use std::path::{Path, PathBuf};

use common::{binary, features, folder, gpu, grid, relative_error, seeded};
use metacompress::files::{self, TensorOut};
use metacompress::{reference, Dtype, Keep, Layout, Scope};
use safetensors::SafeTensors;

struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Outcome {
    let output = binary().args(args).output().unwrap();
    Outcome {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Writes small valid weights (d 13, d_c 5, 3x3 table) with the CLI's own `init`.
fn init_weights(dir: &Path) -> PathBuf {
    let weights = dir.join("weights.safetensors");
    let out = run(&[
        "init",
        "--dim",
        "13",
        "--dc",
        "5",
        "--pos",
        "3x3",
        "--seed",
        "4",
        "--output",
        path(&weights),
    ]);
    assert_eq!(out.code, 0, "init failed: {}", out.stderr);
    weights
}

fn write_features(file: &Path, shape: Vec<usize>, values: &[f32], grids: Option<&str>) {
    let metadata: Vec<(&str, String)> = grids
        .map(|g| ("grids", g.to_string()))
        .into_iter()
        .collect();
    files::write_tensors(
        file,
        &[TensorOut {
            name: "features",
            shape,
            values,
            dtype: Dtype::F32,
        }],
        &metadata,
    )
    .unwrap();
}

#[test]
fn compress_a_bf16_batch_with_loose_tokens_matches_the_reference() {
    let dir = folder("compress_bf16");
    let (seed, mut rng) = seeded("compress_a_bf16_batch");
    let weights_path = init_weights(&dir);
    // Two grids (3x5 and 4x3) with loose tokens between and after them: n = 15 + 2 + 12 + 3.
    let layout = Layout::new(32, vec![grid(0, 3, 5), grid(17, 4, 3)]).unwrap();
    let original = features(&mut rng, 2, 32, 13);
    let input = dir.join("input.safetensors");
    files::write_input(
        &input,
        &original,
        true,
        Dtype::BF16,
        Some(&layout.to_json()),
        None,
    )
    .unwrap();
    // What the program reads: the features rounded to bf16.
    let read = files::read_input(&input).unwrap();
    assert_eq!(read.dtype, Dtype::BF16);
    let weights = files::read_weights(&weights_path).unwrap();
    assert_eq!(weights.w_q(), weights.w_k());
    let keep = Keep::new(0.5).unwrap();
    let expected = reference::forward(
        &read.features(),
        &weights,
        &layout,
        &layout.queries(keep),
        Scope::Grid,
    );

    // Each backend, and the GPU once more with its products cut in 2 pieces (n = 32).
    let mut backends = vec![
        ("cpu".to_string(), "auto"),
        ("reference".to_string(), "auto"),
        ("auto".to_string(), "auto"),
    ];
    if let Some(context) = gpu() {
        backends.push((context.adapter.backend.clone(), "auto"));
        backends.push((context.adapter.backend.clone(), "2"));
    }
    for (backend, split_k) in backends.iter().map(|(b, s)| (b.as_str(), *s)) {
        let output = dir.join(format!("out-{backend}-{split_k}.safetensors"));
        let out = run(&[
            "compress",
            "--split-k",
            split_k,
            "--weights",
            path(&weights_path),
            "--input",
            path(&input),
            "--output",
            path(&output),
            "--reduction",
            "0.5",
            "--scope",
            "grid",
            "--backend",
            backend,
            "--save-projection",
            "--output-dtype",
            "f32",
        ]);
        assert_eq!(out.code, 0, "{backend}: {}", out.stderr);
        assert!(
            out.stdout.contains("2 x 32 ->"),
            "{backend}: {}",
            out.stdout
        );
        let bytes = std::fs::read(&output).unwrap();
        let file = SafeTensors::deserialize(&bytes).unwrap();
        let (_, metadata) = SafeTensors::read_metadata(&bytes).unwrap();
        let metadata = metadata.metadata().clone().unwrap();
        let m = layout.queries(keep).count;
        assert_eq!(metadata["method"], "metacompress");
        assert_eq!(metadata["keep"], "0.5");
        assert_eq!(metadata["scope"], "grid");
        assert_eq!(metadata["n"], "32");
        assert_eq!(metadata["m"], m.to_string());
        assert_eq!(metadata["query_grids"], layout.queries(keep).to_json());
        let tokens = file.tensor("tokens").unwrap();
        assert_eq!(tokens.shape(), &[2, m, 13]);
        assert_eq!(tokens.dtype(), safetensors::Dtype::F32);
        let values: Vec<f32> = bytemuck::pod_collect_to_vec(tokens.data());
        let error = relative_error(&values, &expected.tokens);
        assert!(
            error <= 1e-4,
            "seed {seed}: {backend}: tokens error {error}"
        );
        let projection = file.tensor("projection").unwrap();
        assert_eq!(projection.shape(), &[2, m, 32]);
        let values: Vec<f32> = bytemuck::pod_collect_to_vec(projection.data());
        let error = relative_error(&values, &expected.projection);
        assert!(
            error <= 1e-4,
            "seed {seed}: {backend}: projection error {error}"
        );
    }

    // Without --output-dtype the tokens keep the input's dtype, and --grid overrides the file.
    let output = dir.join("out-default.safetensors");
    let out = run(&[
        "compress",
        "--weights",
        path(&weights_path),
        "--input",
        path(&input),
        "--output",
        path(&output),
        "--backend",
        "cpu",
        "--grid",
        "4x8",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let bytes = std::fs::read(&output).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(
        file.tensor("tokens").unwrap().dtype(),
        safetensors::Dtype::BF16
    );
    assert!(file.tensor("projection").is_err());
    // 4x8 at keep 0.1: round(4 * 0.316) = 1, round(8 * 0.316) = 3.
    assert_eq!(file.tensor("tokens").unwrap().shape(), &[2, 3, 13]);
}

/// A case of bad input: the flags after `compress`'s three paths, or a whole command.
struct Bad<'a> {
    what: &'a str,
    args: Vec<String>,
    code: i32,
    /// Words the one stderr line must hold.
    says: &'a [&'a str],
}

/// `args` with the value of `--backend` replaced.
fn with_backend(mut args: Vec<String>, backend: &str) -> Vec<String> {
    let flag = args.iter().position(|a| a == "--backend").unwrap();
    args[flag + 1] = backend.to_string();
    args
}

fn check_bad(case: &Bad, output: &Path) {
    let before = std::fs::read(output).unwrap();
    let args: Vec<&str> = case.args.iter().map(String::as_str).collect();
    let out = run(&args);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(
        out.code, case.code,
        "{}: exit {}; stderr: {}",
        case.what, out.code, out.stderr
    );
    assert_eq!(
        lines.len(),
        1,
        "{}: expected one stderr line, got: {}",
        case.what,
        out.stderr
    );
    for word in case.says {
        assert!(
            lines[0].contains(word),
            "{}: {:?} lacks {word:?}",
            case.what,
            lines[0]
        );
    }
    assert!(!out.stderr.contains("panicked"), "{}: panicked", case.what);
    assert_eq!(
        std::fs::read(output).unwrap(),
        before,
        "{}: output file changed",
        case.what
    );
    let leftovers: Vec<_> = std::fs::read_dir(output.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
        .collect();
    assert!(leftovers.is_empty(), "{}: left a temporary file", case.what);
}

#[test]
fn every_class_of_bad_input_gets_one_line_and_leaves_the_output_alone() {
    let dir = folder("bad_input");
    let weights = init_weights(&dir);
    let output = dir.join("existing.safetensors");
    std::fs::write(&output, b"precious earlier result").unwrap();
    let (_, mut rng) = seeded("bad_input");
    let good = features(&mut rng, 1, 9, 13);
    let good_input = dir.join("good.safetensors");
    files::write_input(&good_input, &good, false, Dtype::F32, None, None).unwrap();

    let make = |name: &str, shape: Vec<usize>, values: Vec<f32>, grids: Option<&str>| {
        let file = dir.join(name);
        write_features(&file, shape, &values, grids);
        file
    };
    let wrong_width = make(
        "wrong_width.safetensors",
        vec![9, 12],
        vec![0.5; 9 * 12],
        None,
    );
    let flat = make("flat.safetensors", vec![9 * 13], vec![0.5; 9 * 13], None);
    let mut with_nan = good.values().to_vec();
    with_nan[2 * 13 + 7] = f32::NAN;
    let nan_input = make("nan.safetensors", vec![9, 13], with_nan, None);
    let mut with_inf = good.values().to_vec();
    with_inf[4] = f32::NEG_INFINITY;
    let inf_input = make("inf.safetensors", vec![9, 13], with_inf, None);
    let not_square = make("ten.safetensors", vec![10, 13], vec![0.25; 130], None);
    let overlapping = make(
        "overlap.safetensors",
        vec![10, 13],
        vec![0.25; 130],
        Some("[[0,2,3],[5,1,2]]"),
    );
    let bad_json = make(
        "badjson.safetensors",
        vec![10, 13],
        vec![0.25; 130],
        Some("[[0,2"),
    );
    let no_features = dir.join("no_features.safetensors");
    files::write_tensors(
        &no_features,
        &[TensorOut {
            name: "image",
            shape: vec![9, 13],
            values: good.values(),
            dtype: Dtype::F32,
        }],
        &[],
    )
    .unwrap();
    let int_features = dir.join("int_features.safetensors");
    std::fs::write(
        &int_features,
        safetensors::serialize(
            [(
                "features",
                safetensors::tensor::TensorView::new(
                    safetensors::Dtype::I32,
                    vec![9, 13],
                    &[0u8; 9 * 13 * 4],
                )
                .unwrap(),
            )],
            None,
        )
        .unwrap(),
    )
    .unwrap();

    // Weights with a NaN, and weights whose w_k disagrees with w_q.
    let nan_weights = dir.join("nan_weights.safetensors");
    let mut w = vec![0.1f32; 13 * 5];
    w[3 * 5 + 1] = f32::NAN;
    let fine = vec![0.1f32; 13 * 5];
    let omega = vec![1.0f32; 5];
    let tensor = |name, shape: Vec<usize>, values| TensorOut {
        name,
        shape,
        values,
        dtype: Dtype::F32,
    };
    files::write_tensors(
        &nan_weights,
        &[
            tensor("w_q", vec![13, 5], &w),
            tensor("w_k", vec![13, 5], &fine),
            tensor("omega", vec![5], &omega),
        ],
        &[],
    )
    .unwrap();
    let mismatched = dir.join("mismatched_weights.safetensors");
    files::write_tensors(
        &mismatched,
        &[
            tensor("w_q", vec![13, 5], &fine),
            tensor("w_k", vec![5, 13], &fine),
            tensor("omega", vec![5], &omega),
        ],
        &[],
    )
    .unwrap();

    // A file cut short, a file of garbage, an empty file.
    let truncated = dir.join("truncated.safetensors");
    let whole = std::fs::read(&good_input).unwrap();
    std::fs::write(&truncated, &whole[..whole.len() - 20]).unwrap();
    let garbage = dir.join("garbage.safetensors");
    std::fs::write(
        &garbage,
        b"this is not a safetensors file at all, just words",
    )
    .unwrap();
    let empty = dir.join("empty.safetensors");
    std::fs::write(&empty, b"").unwrap();
    // A header that claims 16 TB of features for a file of 16 bytes of data.
    let liar = dir.join("liar.safetensors");
    let header = br#"{"features":{"dtype":"F32","shape":[1000000000000,4096],"data_offsets":[0,16384000000000000]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0u8; 16]);
    std::fs::write(&liar, bytes).unwrap();
    // A header length field claiming an exabyte.
    let huge_header = dir.join("huge_header.safetensors");
    let mut bytes = u64::MAX.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    std::fs::write(&huge_header, bytes).unwrap();

    let negative_attention = dir.join("negative_attention.safetensors");
    let mut attention = vec![0.25f32; 9];
    attention[4] = -0.5;
    files::write_tensors(
        &negative_attention,
        &[
            TensorOut {
                name: "features",
                shape: vec![9, 13],
                values: good.values(),
                dtype: Dtype::F32,
            },
            TensorOut {
                name: "attention",
                shape: vec![9],
                values: &attention,
                dtype: Dtype::F32,
            },
        ],
        &[],
    )
    .unwrap();

    let compress = |input: &Path, weights: &Path, extra: &[&str]| {
        common::compress_args(weights, input, &output, extra)
    };
    let cases = [
        Bad {
            what: "wrong width",
            args: compress(&wrong_width, &weights, &[]),
            code: 1,
            says: &["width", "12", "13"],
        },
        Bad {
            what: "misshapen features",
            args: compress(&flat, &weights, &[]),
            code: 1,
            says: &["features", "[117]"],
        },
        Bad {
            what: "missing features",
            args: compress(&no_features, &weights, &[]),
            code: 1,
            says: &["features", "missing"],
        },
        Bad {
            what: "integer features",
            args: compress(&int_features, &weights, &[]),
            code: 1,
            says: &["I32", "F32"],
        },
        Bad {
            what: "NaN in features",
            args: compress(&nan_input, &weights, &[]),
            code: 1,
            says: &["features[0, 2, 7]", "NaN"],
        },
        Bad {
            what: "infinity in features",
            args: compress(&inf_input, &weights, &[]),
            code: 1,
            says: &["features[0, 0, 4]", "inf"],
        },
        Bad {
            what: "NaN in weights",
            args: compress(&good_input, &nan_weights, &[]),
            code: 1,
            says: &["w_q[3, 1]", "NaN"],
        },
        Bad {
            what: "mismatched weights",
            args: compress(&good_input, &mismatched, &[]),
            code: 1,
            says: &["w_k", "[5, 13]"],
        },
        Bad {
            what: "keep zero",
            args: compress(&good_input, &weights, &["--keep", "0"]),
            code: 2,
            says: &["keep 0", "(0, 1]"],
        },
        Bad {
            what: "keep above one",
            args: compress(&good_input, &weights, &["--keep", "1.5"]),
            code: 2,
            says: &["keep 1.5"],
        },
        Bad {
            what: "keep negative",
            args: compress(&good_input, &weights, &["--keep", "-0.2"]),
            code: 2,
            says: &["keep -0.2"],
        },
        Bad {
            what: "keep NaN",
            args: compress(&good_input, &weights, &["--keep", "NaN"]),
            code: 2,
            says: &["keep NaN"],
        },
        Bad {
            what: "keep not a number",
            args: compress(&good_input, &weights, &["--keep", "lots"]),
            code: 2,
            says: &["lots", "--keep"],
        },
        Bad {
            what: "split-K zero pieces",
            args: compress(&good_input, &weights, &["--split-k", "0"]),
            code: 2,
            says: &["--split-k", "\"0\"", "auto, off or a piece count"],
        },
        Bad {
            what: "reduction one",
            args: compress(&good_input, &weights, &["--reduction", "1"]),
            code: 2,
            says: &["--reduction 1"],
        },
        Bad {
            what: "keep and reduction",
            args: compress(
                &good_input,
                &weights,
                &["--keep", "0.5", "--reduction", "0.5"],
            ),
            code: 2,
            says: &["--reduction"],
        },
        Bad {
            what: "overlapping grid flags",
            args: compress(
                &good_input,
                &weights,
                &["--grid", "2x3@0", "--grid", "2x2@4"],
            ),
            code: 2,
            says: &["overlap", "2x3@0"],
        },
        Bad {
            what: "grid past the end",
            args: compress(&good_input, &weights, &["--grid", "3x4"]),
            code: 2,
            says: &["3x4@0", "0..9"],
        },
        Bad {
            what: "grid flag not a grid",
            args: compress(&good_input, &weights, &["--grid", "3by3"]),
            code: 2,
            says: &["3by3", "HxW"],
        },
        Bad {
            what: "overlapping grids metadata",
            args: compress(&overlapping, &weights, &[]),
            // The file's metadata is at fault, not a flag (exit 1, naming the file).
            code: 1,
            says: &["overlap", "overlap.safetensors", "grids metadata"],
        },
        Bad {
            what: "grids metadata not JSON",
            args: compress(&bad_json, &weights, &[]),
            code: 1,
            says: &["grids", "[[0,2"],
        },
        Bad {
            what: "non-square n without layout",
            args: compress(&not_square, &weights, &[]),
            code: 2,
            says: &["10 tokens", "--grid"],
        },
        Bad {
            what: "truncated file",
            args: compress(&truncated, &weights, &[]),
            code: 1,
            says: &["truncated.safetensors", "not a valid safetensors"],
        },
        Bad {
            what: "garbage file",
            args: compress(&garbage, &weights, &[]),
            code: 1,
            says: &["garbage.safetensors"],
        },
        Bad {
            what: "empty file",
            args: compress(&empty, &weights, &[]),
            code: 1,
            says: &["empty.safetensors"],
        },
        Bad {
            what: "header claiming terabytes",
            args: compress(&liar, &weights, &[]),
            code: 1,
            says: &["liar.safetensors"],
        },
        Bad {
            what: "header length claiming exabytes",
            args: compress(&huge_header, &weights, &[]),
            code: 1,
            says: &["huge_header.safetensors"],
        },
        Bad {
            what: "missing input",
            args: compress(&dir.join("absent.safetensors"), &weights, &[]),
            code: 1,
            says: &["absent.safetensors"],
        },
        Bad {
            what: "weights given as input",
            args: compress(&weights, &weights, &[]),
            code: 1,
            says: &["features", "missing"],
        },
        Bad {
            what: "f16 on the cpu backend",
            args: compress(&good_input, &weights, &["--precision", "f16"]),
            code: 2,
            says: &["f16", "cpu"],
        },
        Bad {
            what: "unknown backend",
            args: with_backend(compress(&good_input, &weights, &[]), "cuda"),
            code: 2,
            says: &["cuda", "--backend"],
        },
        Bad {
            what: "unknown scope",
            args: compress(&good_input, &weights, &["--scope", "world"]),
            code: 2,
            says: &["world"],
        },
        Bad {
            what: "unknown adapter",
            args: with_backend(
                compress(
                    &good_input,
                    &weights,
                    &["--adapter", "no-such-gpu-anywhere"],
                ),
                "auto",
            ),
            code: 1,
            says: &["no-such-gpu-anywhere"],
        },
        Bad {
            what: "init d_c above d",
            args: ["init", "--dim", "4", "--dc", "8", "--output", path(&output)]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            code: 2,
            says: &["--dc 8", "--dim 4"],
        },
        Bad {
            what: "init bad table",
            args: [
                "init",
                "--dim",
                "4",
                "--dc",
                "2",
                "--pos",
                "3y3",
                "--output",
                path(&output),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            code: 2,
            says: &["--pos", "3y3"],
        },
        Bad {
            what: "unknown command",
            args: vec!["shrink".into()],
            code: 2,
            says: &["shrink"],
        },
        Bad {
            what: "metacompress without weights",
            args: compress(&good_input, &weights, &[])
                .into_iter()
                .filter(|a| *a != "--weights" && *a != path(&weights))
                .collect(),
            code: 2,
            says: &["metacompress", "--weights"],
        },
        Bad {
            what: "visionzip without attention",
            args: compress(&good_input, &weights, &["--method", "visionzip"]),
            // The input file lacks what the method reads: the file's fault.
            code: 1,
            says: &["visionzip", "attention"],
        },
        Bad {
            what: "negative attention",
            args: compress(&negative_attention, &weights, &["--method", "prumerge"]),
            code: 1,
            says: &["attention[4]", "-0.5", "non-negative"],
        },
        Bad {
            what: "unknown method",
            args: compress(&good_input, &weights, &["--method", "fastv"]),
            code: 2,
            says: &["fastv"],
        },
    ];
    for case in &cases {
        check_bad(case, &output);
    }
}

#[test]
fn devices_lists_the_adapter_and_demo_runs() {
    let out = run(&["devices"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    if let Some(context) = gpu() {
        assert!(out.stdout.contains(&context.adapter.name), "{}", out.stdout);
        assert!(out.stdout.contains("f16 "), "{}", out.stdout);
        assert!(out.stdout.contains("timestamp queries"), "{}", out.stdout);
        let binding = format!(
            "largest storage binding {} MiB",
            context.binding_limit() >> 20
        );
        assert!(out.stdout.contains(&binding), "{}", out.stdout);
    }
    let out = run(&["demo"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("576 -> 64 tokens"), "{}", out.stdout);
    for object in ["cat", "ball", "lamp", "book"] {
        assert!(out.stdout.contains(object), "{}", out.stdout);
    }
}

#[test]
fn compress_runs_every_method_and_compare_prints_the_table_json_and_pictures() {
    let dir = folder("methods");
    let weights = init_weights(&dir);
    let (seed, mut rng) = seeded("compress_runs_every_method");
    // A 5x6 grid, two loose tokens, a 1x7 row: n = 39, m at keep 0.3 = 3x3 + 1x2 = 11.
    let layout = Layout::new(39, vec![grid(0, 5, 6), grid(32, 1, 7)]).unwrap();
    let x = features(&mut rng, 2, 39, 13);
    let attention: Vec<f32> = (0..78).map(|i| ((i * 37) % 11) as f32 / 10.0).collect();
    let input = dir.join("input.safetensors");
    files::write_input(
        &input,
        &x,
        true,
        Dtype::F32,
        Some(&layout.to_json()),
        Some(&attention),
    )
    .unwrap();
    let read = files::read_input(&input).unwrap();
    assert_eq!(read.attention.as_deref(), Some(&attention[..]));
    for method in metacompress::methods::Method::ALL {
        let output = dir.join(format!("{}.safetensors", method.name()));
        let out = run(&common::compress_args(
            &weights,
            &input,
            &output,
            &[
                "--keep",
                "0.3",
                "--method",
                method.name(),
                "--save-projection",
            ],
        ));
        assert_eq!(out.code, 0, "{}: {}", method.name(), out.stderr);
        let bytes = std::fs::read(&output).unwrap();
        let file = SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(file.tensor("tokens").unwrap().shape(), [2, 11, 13]);
        assert_eq!(file.tensor("projection").unwrap().shape(), [2, 11, 39]);
        let (_, metadata) = SafeTensors::read_metadata(&bytes).unwrap();
        let metadata = metadata.metadata().clone().unwrap();
        assert_eq!(metadata["method"], method.name());
        assert_eq!(metadata["m"], "11");
        // The scope it ran at, asked for the default image (SPEC section 4, v4).
        assert_eq!(metadata["scope"], method.scope(Scope::Image).name());
        // The tokens are P X for the P in the file (seed {seed}).
        let p: Vec<f64> = common::f32_tensor(&file, "projection")
            .iter()
            .map(|&v| v as f64)
            .collect();
        let tokens = common::f32_tensor(&file, "tokens");
        for image in 0..2 {
            let expected =
                reference::reduce(&p[image * 11 * 39..][..11 * 39], x.image(image), 39, 13);
            let error = relative_error(&tokens[image * 11 * 13..][..11 * 13], &expected);
            assert!(error <= 1e-5, "seed {seed}, {}: {error}", method.name());
        }
    }
    let json = dir.join("compare.json");
    let pictures = dir.join("png");
    let out = run(&[
        "compare",
        "--input",
        path(&input),
        "--weights",
        path(&weights),
        "--keep",
        "0.3",
        "--json",
        path(&json),
        "--png",
        path(&pictures),
        "--png-scale",
        "2",
        "--backend",
        "cpu",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    for method in metacompress::methods::Method::ALL {
        assert!(
            out.stdout.lines().any(|l| l.starts_with(method.name())),
            "{}",
            out.stdout
        );
    }
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let methods = report["methods"].as_array().unwrap();
    assert_eq!(methods.len(), 8, "{report}");
    for row in methods {
        assert_eq!(row["tokens"], 11);
        for key in [
            "attention_error",
            "proportional_attention_error",
            "coverage",
            "energy_kept",
        ] {
            let value = row[key].as_f64().unwrap();
            assert!(value.is_finite() && value >= 0.0, "{key}: {row}");
        }
        assert!(row["energy_kept"].as_f64().unwrap() <= 1.0 + 1e-9);
    }
    // 8 methods x 2 grids, and metacompress's row heat maps (4 of the 9 queries, 2 of 2).
    let count = std::fs::read_dir(&pictures).unwrap().count();
    assert_eq!(count, 8 * 2 + 4 + 2, "pictures written");
    // Without weights and attention: the methods that need them are skipped, saying why.
    let plain = dir.join("plain.safetensors");
    files::write_input(&plain, &x, true, Dtype::F32, Some(&layout.to_json()), None).unwrap();
    let out = run(&[
        "compare",
        "--input",
        path(&plain),
        "--keep",
        "0.3",
        "--backend",
        "cpu",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    for skipped in ["metacompress", "visionzip", "prumerge"] {
        let line = out.stdout.lines().find(|l| l.starts_with(skipped)).unwrap();
        assert!(line.contains("skipped"), "{line}");
    }
}

#[test]
fn help_and_version_exit_zero() {
    for flag in ["--help", "--version"] {
        let out = run(&[flag]);
        assert_eq!(out.code, 0, "{flag}: {}", out.stderr);
    }
    let out = run(&["compress", "--help"]);
    assert!(out.stdout.contains("--save-projection"));
}

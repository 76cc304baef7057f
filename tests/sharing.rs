//! One `P`, several token sets (`Runner::run_sharing`, for models such as Qwen3-VL whose
//! vision tower hands the language model deepstack features beside the main tokens): each
//! extra set's reduced tokens equal a separate float64 product with the same `P`, and the
//! main result equals a plain run, on every backend this machine has (the float64 reference,
//! the CPU path and, where there is an adapter, the GPU), at odd sizes on a strided layout
//! with loose tokens, with a batch.

mod common;

use common::{features, gpu, relative_error, seeded, weights};
use metacompress::methods::{Method, Request, Runner};
use metacompress::{Backend, Grid, HostTokens, Keep, Layout, Options, Precision};
use rand::Rng;

/// `P X` in float64 for each image (`P` `b x m x n`, `X` `b x n x d`).
fn product(p: &[f32], x: &[f32], b: usize, m: usize, n: usize, d: usize) -> Vec<f64> {
    let mut out = vec![0.0f64; b * m * d];
    for image in 0..b {
        for i in 0..m {
            for j in 0..n {
                let weight = p[(image * m + i) * n + j] as f64;
                if weight != 0.0 {
                    for c in 0..d {
                        out[(image * m + i) * d + c] += weight * x[(image * n + j) * d + c] as f64;
                    }
                }
            }
        }
    }
    out
}

#[test]
fn one_p_applied_to_several_token_sets_equals_separate_products() {
    let (seed, mut rng) = seeded("sharing");
    let (b, d, channels) = (2, rng.random_range(9..17), 5);
    // A strided grid (a loose token after each row), then a plain grid and loose tokens.
    let (h, w) = (rng.random_range(5..9), rng.random_range(5..9));
    let first = Grid::strided(0, h, w, w + 1);
    let second = Grid::new(h * (w + 1), 3, 7);
    let n = h * (w + 1) + 21 + 2;
    let layout = Layout::new(n, vec![first, second]).unwrap();
    let main = features(&mut rng, b, n, d);
    // Two deepstack-like levels: one of the same width, one wider.
    let levels = [features(&mut rng, b, n, d), features(&mut rng, b, n, d + 6)];
    let pmeta = weights(&mut rng, d, channels, Some((4, 4)));
    let mut runners = vec![
        (
            "cpu",
            Runner::new(Some(pmeta.clone()), Backend::Cpu, None, Precision::F32).unwrap(),
        ),
        (
            "reference",
            Runner::new(
                Some(pmeta.clone()),
                Backend::Reference,
                None,
                Precision::F32,
            )
            .unwrap(),
        ),
    ];
    if let Some(context) = gpu() {
        runners.push((
            "gpu",
            Runner::on_context(Some(pmeta.clone()), context, Precision::F32).unwrap(),
        ));
    }
    let options = Options {
        keep: Keep::new(0.3).unwrap(),
        poison: true,
        ..Options::default()
    };
    for (backend, runner) in &runners {
        for method in [Method::MetaCompress, Method::Pool, Method::Tome] {
            let what = format!("{backend} {}, seed {seed}", method.name());
            let request = Request {
                features: (&main).into(),
                layout: &layout,
                attention: None,
                seed: 7,
            };
            let extra: Vec<HostTokens> = levels.iter().map(HostTokens::from).collect();
            let shared = runner
                .run_sharing(method, &request, &extra, &options)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let plain = runner.run(method, &request, &options).unwrap();
            assert_eq!(shared.main.tokens, plain.tokens, "{what}: main tokens");
            // P is handed back only where a plain run would hand it back.
            assert_eq!(
                shared.main.projection.is_some(),
                plain.projection.is_some(),
                "{what}"
            );
            let with_p = Options {
                save_projection: true,
                ..options
            };
            let p = runner
                .run(method, &request, &with_p)
                .unwrap()
                .projection
                .unwrap();
            let m = shared.main.queries.count;
            assert_eq!(shared.extra.len(), levels.len(), "{what}");
            for (level, (reduced, x)) in shared.extra.iter().zip(&levels).enumerate() {
                let expected = product(&p, x.values(), b, m, n, x.width());
                assert_eq!(reduced.len(), b * m * x.width(), "{what} level {level}");
                let error = relative_error(reduced, &expected);
                assert!(error <= 1e-5, "{what} level {level}: error {error:e}");
            }
        }
        // A set of other images or tokens is refused in one line.
        let short = features(&mut rng, b, n - 1, d);
        let request = Request {
            features: (&main).into(),
            layout: &layout,
            attention: None,
            seed: 0,
        };
        let error = runner
            .run_sharing(Method::Pool, &request, &[(&short).into()], &options)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("extra token set 0") && error.contains(&format!("{}", n - 1)),
            "{error}"
        );
    }
}

/// `metacompress compress` on a file holding deepstack sets (metadata `deepstack`, as
/// `export_features` writes for Qwen3-VL): each listed set comes back reduced with the
/// features' one `P` (checked against a float64 product with the saved projection), named as
/// in the input and listed in the output's metadata; for a training-free method and for
/// MetaCompress with weights from `init`, at odd sizes. A set that does not match the
/// features, or a listed set that is missing, is the file's fault: exit 1, one line.
#[test]
fn the_cli_reduces_a_files_deepstack_sets_with_the_features_p() {
    use metacompress::files::{self, TensorOut};
    use metacompress::Dtype;
    let (seed, mut rng) = seeded("cli_deepstack");
    let dir = common::folder("cli_deepstack");
    let (h, w, d) = (rng.random_range(5..9), rng.random_range(5..9), 11);
    let n = h * (w + 1);
    let widths = [d, rng.random_range(3..8)];
    let x = features(&mut rng, 1, n, d);
    let sets: Vec<Vec<f32>> = widths
        .iter()
        .map(|&k| features(&mut rng, 1, n, k).values().to_vec())
        .collect();
    let grids = format!("[[0, {h}, {w}, {}]]", w + 1);
    let write = |file: &std::path::Path, names: &[&str], rows: usize| {
        let mut tensors = vec![TensorOut {
            name: "features",
            shape: vec![n, d],
            values: x.values(),
            dtype: Dtype::F32,
        }];
        for ((name, set), &k) in names.iter().zip(&sets).zip(&widths) {
            tensors.push(TensorOut {
                name,
                shape: vec![rows, k],
                values: &set[..rows * k],
                dtype: Dtype::F32,
            });
        }
        let metadata = [
            ("grids", grids.clone()),
            ("deepstack", r#"["deepstack.0", "deepstack.1"]"#.to_string()),
        ];
        files::write_tensors(file, &tensors, &metadata).unwrap();
    };
    let input = dir.join("input.safetensors");
    write(&input, &["deepstack.0", "deepstack.1"], n);
    let weights = dir.join("weights.safetensors");
    let init = common::binary()
        .args(["init", "--dim", &d.to_string(), "--dc", "5", "--output"])
        .arg(&weights)
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    // `metacompress compress` on the CPU path at keep 0.3, with `flags` added.
    let compress =
        |input: &std::path::Path, output: &std::path::Path, flags: &[&std::ffi::OsStr]| {
            common::binary()
                .args(["compress", "--keep", "0.3", "--backend", "cpu", "--input"])
                .arg(input)
                .arg("--output")
                .arg(output)
                .args(flags)
                .output()
                .unwrap()
        };
    for method in ["pool", "metacompress"] {
        let output = dir.join(format!("{method}.safetensors"));
        let mut flags = vec![
            "--method".as_ref(),
            method.as_ref(),
            "--save-projection".as_ref(),
        ];
        if method == "metacompress" {
            flags.extend(["--weights".as_ref(), weights.as_os_str()]);
        }
        let run = compress(&input, &output, &flags);
        assert!(
            run.status.success(),
            "{method}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        let bytes = std::fs::read(&output).unwrap();
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let p = common::f32_tensor(&file, "projection");
        let m = p.len() / n;
        let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let listed = metadata
            .metadata()
            .as_ref()
            .unwrap()
            .get("deepstack")
            .cloned();
        assert_eq!(
            listed.as_deref(),
            Some(r#"["deepstack.0","deepstack.1"]"#),
            "{method}"
        );
        let tokens = common::f32_tensor(&file, "tokens");
        let error = relative_error(&tokens, &product(&p, x.values(), 1, m, n, d));
        assert!(
            error < 1e-5,
            "{method} tokens: relative error {error:e}, seed {seed}"
        );
        for ((name, set), &k) in ["deepstack.0", "deepstack.1"]
            .iter()
            .zip(&sets)
            .zip(&widths)
        {
            let reduced = common::f32_tensor(&file, name);
            assert_eq!(reduced.len(), m * k, "{method} {name}");
            let error = relative_error(&reduced, &product(&p, set, 1, m, n, k));
            assert!(
                error < 1e-5,
                "{method} {name}: relative error {error:e}, seed {seed}"
            );
        }
    }
    // The file's faults: a set with a row too few, a listed set that is not there.
    for (case, names, rows, expected) in [
        (
            "short",
            &["deepstack.0", "deepstack.1"][..],
            n - 1,
            "tensor deepstack.0 has shape",
        ),
        (
            "missing",
            &["deepstack.0"][..],
            n,
            "tensor deepstack.1 is missing",
        ),
    ] {
        let bad = dir.join(format!("{case}.safetensors"));
        write(&bad, names, rows);
        let run = compress(
            &bad,
            &dir.join("never.safetensors"),
            &["--method".as_ref(), "pool".as_ref()],
        );
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(1), "{case}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{case}: {stderr}");
        assert!(stderr.contains(expected), "{case}: {stderr}");
        assert!(!dir.join("never.safetensors").exists(), "{case}");
    }
}

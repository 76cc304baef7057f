//! The command line with real models' token orders: `metacompress layout`, a LLaVA-NeXT
//! feature file in the model's own order compressed with only `--layout llava-next:WxH` on
//! every backend (against the float64 reference on hand-written grids), and bad layouts
//! refused in one line.

mod common;

use std::path::Path;

use common::{binary, features, folder, relative_error, seeded};
use metacompress::files::{self, TensorOut};
use metacompress::{reference, Dtype, Grid, Keep, Layout, Scope};
use safetensors::SafeTensors;

fn run<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (i32, String, String) {
    let output = binary().args(args).output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn layout_prints_grids_as_flags_and_exact_json() {
    let (code, stdout, stderr) = run(&["layout", "llava-next:1000x667", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout.trim(),
        r#"{"n": 2144, "grids": [[0, 24, 24, 24], [576, 32, 48, 49]]}"#
    );
    let (code, stdout, _) = run(&["layout", "llava-next:672x672"]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("--grid 24x24@0 --grid 48x48@576/49"),
        "{stdout}"
    );
    assert!(stdout.contains("n = 2928"), "{stdout}");
    let (code, stdout, _) = run(&["layout", "qwen2-vl:2x28x42", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(
        stdout.trim(),
        r#"{"n": 588, "grids": [[0, 14, 21, 21], [294, 14, 21, 21]]}"#
    );
    // Other pinpoints (a LLaVA-NeXT-34B / OneVision-style list).
    let (code, stdout, stderr) = run(&[
        "layout",
        "llava-next:1000x667",
        "--pinpoints",
        "[[336,336],[336,1008],[1008,1008]]",
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let value: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let expected = Layout::llava_next(1000, 667, &[[336, 336], [336, 1008], [1008, 1008]]).unwrap();
    assert_eq!(value["n"], expected.tokens());
}

#[test]
fn a_llava_next_file_in_the_models_order_compresses_with_only_its_preset() {
    let dir = folder("llava_next_preset");
    let (seed, mut rng) = seeded("a_llava_next_file_in_the_models_order");
    // A 1000x667 photo: base 24x24, crops 32x48 with a newline token after each row, written
    // here from the model's arithmetic (see tests/presets.rs), not taken from the library.
    let grids = vec![Grid::new(0, 24, 24), Grid::strided(576, 32, 48, 49)];
    let layout = Layout::new(576 + 32 * 49, grids).unwrap();
    let d = 19;
    let weights = dir.join("weights.safetensors");
    let (code, _, stderr) = run(&[
        "init",
        "--dim",
        "19",
        "--dc",
        "7",
        "--pos",
        "5x5",
        "--seed",
        "3",
        "--output",
        path(&weights),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let features = features(&mut rng, 1, layout.tokens(), d);
    let input = dir.join("features.safetensors");
    files::write_tensors(
        &input,
        &[TensorOut {
            name: "features",
            shape: vec![layout.tokens(), d],
            values: features.values(),
            dtype: Dtype::F32,
        }],
        &[],
    )
    .unwrap();
    let pmeta = files::read_weights(&weights).unwrap();
    let mut backends = vec!["cpu", "reference"];
    if common::vulkan().is_some() {
        backends.push("vulkan");
    }
    for scope in [Scope::Image, Scope::Grid] {
        let queries = layout.queries(Keep::new(0.1).unwrap());
        let expected = reference::forward(&features, &pmeta, &layout, &queries, scope);
        for backend in &backends {
            let output = dir.join(format!("out-{backend}-{}.safetensors", scope.name()));
            let (code, _, stderr) = run(&common::compress_args(
                &weights,
                &input,
                &output,
                &[
                    "--layout",
                    "llava-next:1000x667",
                    "--scope",
                    scope.name(),
                    "--backend",
                    backend,
                    "--save-projection",
                ],
            ));
            assert_eq!(code, 0, "seed {seed}: {backend}: {stderr}");
            let bytes = std::fs::read(&output).unwrap();
            let file = SafeTensors::deserialize(&bytes).unwrap();
            let values = |name: &str| common::f32_tensor(&file, name);
            let tokens_error = relative_error(&values("tokens"), &expected.tokens);
            let projection_error = relative_error(&values("projection"), &expected.projection);
            assert!(
                tokens_error <= 1e-4 && projection_error <= 1e-4,
                "seed {seed}: {backend} {scope:?}: tokens {tokens_error:e}, P {projection_error:e}"
            );
            let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
            let metadata = header.metadata().clone().unwrap_or_default();
            assert_eq!(metadata.get("n").map(String::as_str), Some("2144"));
        }
    }
}

//! Deepstack sets named like an output tensor (issue 34, 1b): refused in one line before any
//! work, and the writer refuses a name twice rather than panic.

mod common;

use metacompress::files::{self, TensorOut};
use metacompress::Dtype;

/// An input whose `deepstack` metadata lists a set named `tokens` or `projection` (names
/// `compress` gives its own output) is the file's fault: exit 1, one line naming the set,
/// nothing written (was: exit 101, a panic in safetensors' serialize).
#[test]
fn a_set_named_like_an_output_tensor_is_refused_in_one_line() {
    let dir = common::folder("deepstack_names");
    let (n, d) = (16, 4);
    let x: Vec<f32> = (0..n * d).map(|i| (i as f32 * 0.37).sin()).collect();
    for name in ["tokens", "projection"] {
        let input = dir.join(format!("{name}.safetensors"));
        let tensors = [
            TensorOut {
                name: "features",
                shape: vec![n, d],
                values: &x,
                dtype: Dtype::F32,
            },
            TensorOut {
                name,
                shape: vec![n, d],
                values: &x,
                dtype: Dtype::F32,
            },
        ];
        let metadata = [("deepstack", format!("[\"{name}\"]"))];
        files::write_tensors(&input, &tensors, &metadata).unwrap();
        let output = dir.join(format!("{name}-out.safetensors"));
        let run = common::binary()
            .args(["compress", "--method", "pool", "--backend", "cpu"])
            .args(["--keep", "0.25", "--save-projection", "--input"])
            .arg(&input)
            .arg("--output")
            .arg(&output)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(1), "{name}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{name}: {stderr}");
        assert!(
            stderr.contains(&format!("names tensor {name}, a name compress gives")),
            "{name}: {stderr}"
        );
        assert!(!output.exists(), "{name}");
    }
}

/// The writer refuses two tensors of one name with an error (safetensors' own writer
/// indexes out of bounds on them).
#[test]
fn the_writer_refuses_a_name_twice() {
    let values = [1.0f32; 4];
    let tensor = || TensorOut {
        name: "tokens",
        shape: vec![2, 2],
        values: &values,
        dtype: Dtype::F32,
    };
    let error = files::encode_tensors(&[tensor(), tensor()], &[])
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("cannot store tensor tokens twice"),
        "{error}"
    );
}

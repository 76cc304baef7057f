//! Files (SPEC section 5): weights and features round-trip in F32, F16 and BF16, metadata is
//! read back, and a failed write leaves no trace.

mod common;

use std::path::PathBuf;

use common::{features, grid, seeded, weights};
use metacompress::files::{self, TensorOut};
use metacompress::{Dtype, Layout};

fn folder(test: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(test);
    let _ = std::fs::remove_dir_all(&path);
    std::fs::create_dir_all(&path).unwrap();
    path
}

#[test]
fn weights_round_trip_with_format_metadata() {
    let dir = folder("weights_round_trip");
    let (_, mut rng) = seeded("weights_round_trip");
    let original = weights(&mut rng, 11, 3, Some((2, 5)));
    let file = dir.join("w.safetensors");
    files::write_weights(&file, &original).unwrap();
    assert_eq!(files::read_weights(&file).unwrap(), original);
    let bytes = std::fs::read(&file).unwrap();
    let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let metadata = metadata.metadata().clone().unwrap();
    assert_eq!(metadata["format"], files::WEIGHTS_FORMAT);
    assert_eq!(metadata["version"], "1");
}

#[test]
fn weights_in_half_precision_are_read() {
    let dir = folder("weights_half");
    let (_, mut rng) = seeded("weights_half");
    let original = weights(&mut rng, 7, 2, None);
    for dtype in [Dtype::F16, Dtype::BF16] {
        let file = dir.join(format!("w-{}.safetensors", dtype.name()));
        let tensor = |name, shape: Vec<usize>, values| TensorOut {
            name,
            shape,
            values,
            dtype,
        };
        files::write_tensors(
            &file,
            &[
                tensor("w_q", vec![7, 2], original.w_q()),
                tensor("w_k", vec![7, 2], original.w_k()),
                tensor("omega", vec![2], original.omega()),
            ],
            &[],
        )
        .unwrap();
        let read = files::read_weights(&file).unwrap();
        for (a, b) in read.w_q().iter().zip(original.w_q()) {
            let bound = if dtype == Dtype::F16 { 1e-3 } else { 8e-3 };
            assert!(
                (a - b).abs() <= bound * b.abs().max(1e-2),
                "{dtype:?}: {a} vs {b}"
            );
        }
        assert!(read.position().is_none());
    }
}

#[test]
fn features_round_trip_in_every_dtype_with_their_layout() {
    let dir = folder("features_round_trip");
    let (seed, mut rng) = seeded("features_round_trip");
    let layout = Layout::new(20, vec![grid(1, 3, 4), grid(14, 2, 3)]).unwrap();
    let original = features(&mut rng, 2, 20, 5);
    for dtype in [Dtype::F32, Dtype::F16, Dtype::BF16] {
        for batched in [true, false] {
            let image = if batched {
                original.clone()
            } else {
                metacompress::Features::new(1, 20, 5, original.image(0).to_vec()).unwrap()
            };
            let file = dir.join(format!("x-{}-{batched}.safetensors", dtype.name()));
            files::write_input(&file, &image, batched, dtype, Some(&layout.to_json()), None)
                .unwrap();
            let read = files::read_input(&file).unwrap();
            assert_eq!(read.dtype, dtype);
            assert_eq!(read.batched, batched);
            assert_eq!(read.grids.as_deref(), Some(layout.grids()));
            assert_eq!(read.batch(), image.batch());
            let expected: Vec<f32> = match dtype {
                Dtype::F32 => image.values().to_vec(),
                Dtype::F16 => image
                    .values()
                    .iter()
                    .map(|v| half::f16::from_f32(*v).to_f32())
                    .collect(),
                Dtype::BF16 => image
                    .values()
                    .iter()
                    .map(|v| half::bf16::from_f32(*v).to_f32())
                    .collect(),
            };
            assert_eq!(
                read.features().values(),
                &expected[..],
                "seed {seed}: {dtype:?}"
            );
        }
    }
}

#[test]
fn a_failed_write_changes_nothing_and_leaves_no_temporary_file() {
    let dir = folder("failed_write");
    // The target is a folder: the rename fails after the temporary file was written.
    let target = dir.join("occupied");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("keep.txt"), b"mine").unwrap();
    assert!(files::write_atomically(&target, b"new bytes").is_err());
    assert_eq!(std::fs::read(target.join("keep.txt")).unwrap(), b"mine");
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["occupied".to_string()]);
    // And a write that succeeds replaces the file whole.
    let file = dir.join("out.bin");
    std::fs::write(&file, b"old").unwrap();
    files::write_atomically(&file, b"new").unwrap();
    assert_eq!(std::fs::read(&file).unwrap(), b"new");
}

//! The CLI's memory-mapped input rewritten in place while runs read it (issue 34, 1a): another
//! thread toggles one value of the file between NaN and finite, many times a run; every run
//! exits 0, or 1 with one line ("changed while it was being read", or the NaN it read), never
//! 101 (a panic).

mod common;

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use metacompress::files::{self, TensorOut};
use metacompress::Dtype;

#[cfg(unix)]
#[test]
fn an_input_rewritten_in_place_during_runs_is_refused_in_one_line() {
    let dir = common::folder("cli_rewrite_race");
    let (n, d) = (4096, 512);
    let values = vec![0.5f32; n * d];
    let input = dir.join("input.safetensors");
    files::write_tensors(
        &input,
        &[TensorOut {
            name: "features",
            shape: vec![n, d],
            values: &values,
            dtype: Dtype::F32,
        }],
        &[],
    )
    .unwrap();
    // The last value of the first check chunk (2^15 values): its chunk's second reading
    // reaches it last, the widest window for a change.
    let bytes = std::fs::read(&input).unwrap();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let offset = (8 + header + 4 * ((1 << 15) - 1)) as u64;
    let stop = Arc::new(AtomicBool::new(false));
    let toggler = {
        let (file, stop) = (
            std::fs::OpenOptions::new()
                .write(true)
                .open(&input)
                .unwrap(),
            stop.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                file.write_all_at(&f32::NAN.to_le_bytes(), offset).unwrap();
                file.write_all_at(&0.5f32.to_le_bytes(), offset).unwrap();
            }
        })
    };
    let output = dir.join("out.safetensors");
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..150 {
        let run = common::binary()
            .args([
                "compress",
                "--method",
                "pool",
                "--backend",
                "cpu",
                "--keep",
                "0.25",
            ])
            .arg("--input")
            .arg(&input)
            .arg("--output")
            .arg(&output)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
        let code = run.status.code();
        let fine = match code {
            Some(0) => true,
            Some(1) => {
                stderr.lines().count() == 1
                    && (stderr.contains("changed while it was being read")
                        || stderr.contains("is NaN; expected finite values"))
            }
            _ => false,
        };
        if !fine {
            stop.store(true, Ordering::Relaxed);
            toggler.join().unwrap();
            panic!("exit {code:?}: {stderr}");
        }
        *seen.entry(code).or_insert(0) += 1;
    }
    stop.store(true, Ordering::Relaxed);
    toggler.join().unwrap();
    eprintln!("exit statuses of 150 runs: {seen:?}");
}

//! The finite-value check over memory another thread changes during the check (issue 34, 1a):
//! the check reads the caller's memory, or a mapped file another program rewrites, and must
//! answer in one line whatever it reads, never panic.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use metacompress::HostTokens;

/// A value toggled between NaN and a finite value by another thread while `HostTokens::new`
/// checks the features, many times: every answer is `Ok` or a one-line `InvalidTensor`
/// (the NaN named by its index, or the change named as such), never a panic.
#[test]
fn a_value_toggled_during_the_check_gives_an_error_never_a_panic() {
    let (tokens, width) = (4096, 64);
    let count = tokens * width;
    let toggled = count - 7;
    let values: Arc<Vec<AtomicU32>> = Arc::new(
        (0..count)
            .map(|_| AtomicU32::new(1.0f32.to_bits()))
            .collect(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let toggler = {
        let (values, stop) = (values.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut flips = 0u64;
            while !stop.load(Ordering::Relaxed) {
                values[toggled].store(f32::NAN.to_bits(), Ordering::Relaxed);
                std::hint::spin_loop();
                values[toggled].store(1.0f32.to_bits(), Ordering::Relaxed);
                flips += 1;
            }
            flips
        })
    };
    // SAFETY: `AtomicU32` has the size and alignment of `f32`; the toggler's stores are
    // atomic, so every read sees one whole value (the test is about exactly this race).
    let view: &[f32] =
        unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<f32>(), values.len()) };
    let (mut refused, mut changed) = (0, 0);
    let calls = 4000;
    for _ in 0..calls {
        let answer =
            std::panic::catch_unwind(|| HostTokens::new(view, 1, tokens, width).map(|_| ()));
        match answer {
            Err(_) => {
                stop.store(true, Ordering::Relaxed);
                panic!("the check panicked");
            }
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                let line = error.to_string();
                assert!(!line.contains('\n'), "{line}");
                if line.contains("changed while it was being checked") {
                    changed += 1;
                } else {
                    assert_eq!(
                        line,
                        format!(
                            "features[0, {}, {}] is NaN; expected finite values",
                            toggled / width,
                            toggled % width
                        )
                    );
                    refused += 1;
                }
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let flips = toggler.join().unwrap();
    assert!(flips > 0);
    eprintln!("{calls} calls: {refused} refused the NaN, {changed} saw it change");
}

/// A named set is named in the check's messages (`HostTokens::named`).
#[test]
fn a_named_sets_bad_value_is_named_by_the_set() {
    let mut values = [1.0f32; 2 * 3 * 4];
    values[4 + 3] = f32::NAN;
    let error = HostTokens::named("extra[1]", &values[..], 2, 3, 4)
        .unwrap_err()
        .to_string();
    assert_eq!(error, "extra[1][0, 1, 3] is NaN; expected finite values");
    let error = HostTokens::named("extra[0]", &values[..5], 1, 2, 3)
        .unwrap_err()
        .to_string();
    assert!(error.starts_with("extra[0] hold 5 values"), "{error}");
}

//! A compressor over its life: shared by threads, the memory it holds over many calls, calls
//! that cannot fit refused before any device work, and a lost device reported (a new
//! compressor works). Fresh random inputs each run (seed printed).

mod common;

use std::sync::Arc;

use common::runtime::{assert_same, checked, device_buffer, odd};
use common::{assert_reference, features, gpu, seeded, weights};
use metacompress::gpu::GpuContext;
use metacompress::{Compressor, Dtype, Error, GpuTokens, Layout, Options, Precision};
use rand_chacha::ChaCha8Rng;
#[test]
fn compressor_is_send_and_sync() {
    fn shared<T: Send + Sync>() {}
    shared::<Compressor>();
    shared::<GpuContext>();
}

#[test]
fn five_hundred_calls_hold_no_more_gpu_memory_than_the_first() {
    let Some(context) = gpu() else { return };
    let (seed, mut rng) = seeded("five_hundred_calls");
    let (n, d) = (25, 11);
    let weights = weights(&mut rng, d, 4, Some((3, 3)));
    let layout = Layout::square(n).unwrap();
    let compressor = Compressor::on_context(weights, context.clone(), Precision::F32).unwrap();
    let weight_bytes = compressor.held_bytes();
    let start = compressor.memory().unwrap();
    assert_eq!(
        (start.live_bytes, start.pooled_bytes),
        (weight_bytes, 0),
        "only the weights are held at the start"
    );
    let options = checked(0.2);
    let features = features(&mut rng, 2, n, d);
    let buffer = device_buffer(&context, bytemuck::cast_slice(features.values()));
    let call_bytes = compressor
        .call_bytes(&[((&features).into(), &layout)], &options)
        .unwrap();
    let first = compressor.compress(&features, &layout, &options).unwrap();
    // The footprint the compressor announced is what the call allocated (parameters aside).
    let peak = compressor.memory().unwrap().peak_bytes - weight_bytes;
    assert!(
        peak >= call_bytes && peak <= call_bytes + 4096,
        "seed {seed}: announced {call_bytes} bytes, the call peaked at {peak}"
    );
    let (mut settled, mut ceiling) = (None, 0);
    for call in 0..500 {
        let out = match call % 3 {
            0 => compressor.compress(&features, &layout, &options).unwrap(),
            1 => {
                let tokens = GpuTokens::new(&buffer, Dtype::F32, 2, n, d);
                let resident = compressor
                    .compress_on_gpu(tokens, &layout, &options)
                    .unwrap();
                compressor.read_back(&resident).unwrap()
            }
            _ => pollster::block_on(
                compressor
                    .compress_async(&[((&features).into(), &layout)], &options)
                    .unwrap(),
            )
            .unwrap()
            .pop()
            .unwrap(),
        };
        if call % 50 == 0 {
            assert_same(&out, &first, &format!("seed {seed}: call {call}"));
        }
        let now = compressor.memory().unwrap();
        assert_eq!(
            now.live_bytes, weight_bytes,
            "seed {seed}: after call {call} {} bytes are in use, {weight_bytes} at the start",
            now.live_bytes
        );
        assert_eq!(
            compressor.held_bytes(),
            weight_bytes + now.pooled_bytes,
            "held = weights + pool"
        );
        assert!(
            now.peak_bytes <= weight_bytes + call_bytes + 4096,
            "call {call} peaked higher"
        );
        // Once each kind of call has run twice, the pool grows no more.
        if call < 6 {
            ceiling = ceiling.max(now.pooled_bytes);
        } else {
            assert!(
                now.pooled_bytes <= ceiling,
                "seed {seed}: the pool grew to {} bytes at call {call}",
                now.pooled_bytes
            );
        }
        if call == 5 {
            settled = Some(now);
        }
    }
    // Reuse: after the warm-up, a call creates only what cannot be pooled (read-back buffers,
    // and the buffers a GPU-resident call hands over), at most 4; a call without the pool
    // creates every buffer again.
    let settled = settled.unwrap();
    let end = compressor.memory().unwrap();
    let per_call = (end.buffers_created - settled.buffers_created) as f64 / 494.0;
    assert!(per_call <= 4.0, "{per_call} buffers created per call");
    compressor.set_pool_limit(0);
    let before = compressor.memory().unwrap().buffers_created;
    compressor.compress(&features, &layout, &options).unwrap();
    let unpooled = compressor.memory().unwrap().buffers_created - before;
    assert!(
        unpooled as f64 > 3.0 * per_call + 4.0,
        "{unpooled} vs {per_call}"
    );
    assert_eq!(
        compressor.held_bytes(),
        weight_bytes,
        "no pool: the weights"
    );
    eprintln!("buffers created per call: {per_call:.2} pooled, {unpooled} without the pool");
}

#[test]
fn four_threads_share_one_compressor() {
    let Some(context) = gpu() else { return };
    let (seed, mut rng) = seeded("four_threads");
    let d = odd(&mut rng, 9..17);
    let weights = weights(&mut rng, d, 5, Some((3, 4)));
    let compressor =
        Arc::new(Compressor::on_context(weights.clone(), context, Precision::F32).unwrap());
    let handles: Vec<_> = (0..4u64)
        .map(|thread| {
            let compressor = Arc::clone(&compressor);
            let weights = weights.clone();
            std::thread::spawn(move || {
                let mut rng = <ChaCha8Rng as rand::SeedableRng>::seed_from_u64(seed ^ thread);
                for call in 0..6 {
                    let side = 3 + (thread as usize + call) % 5;
                    let layout = Layout::square(side * side).unwrap();
                    let features = features(&mut rng, 1 + call % 2, side * side, d);
                    let options = checked(0.3);
                    let out = compressor.compress(&features, &layout, &options).unwrap();
                    let what = format!("seed {seed}: thread {thread} call {call}");
                    assert_reference(&out, &features, &weights, &layout, &options, 1e-4, &what);
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().expect("a thread failed");
    }
}

#[test]
fn calls_that_cannot_fit_fail_before_any_device_work() {
    let Some(context) = gpu() else { return };
    let (_, mut rng) = seeded("too_large");
    let (n, d) = (36, 9);
    let weights = weights(&mut rng, d, 4, None);
    let layout = Layout::square(n).unwrap();
    let features = features(&mut rng, 4, n, d);
    let compressor = Compressor::on_context(weights, context.clone(), Precision::F32).unwrap();
    let options = checked(0.25);
    let needed = compressor
        .call_bytes(&[((&features).into(), &layout)], &options)
        .unwrap();
    compressor.set_memory_budget(Some(needed - 1));
    let before = compressor.memory().unwrap();
    let error = compressor
        .compress(&features, &layout, &options)
        .unwrap_err();
    assert!(matches!(error, Error::TooLarge(_)), "{error}");
    assert_eq!(
        error.to_string(),
        format!(
            "the call needs {needed} bytes of GPU memory; the compressor's budget is {} bytes",
            needed - 1
        )
    );
    // A features buffer too small for the shape, or without STORAGE: refused by name.
    let small = device_buffer(&context, &vec![0u8; n * d * 4]);
    let error = compressor
        .compress_on_gpu(
            GpuTokens::new(&small, Dtype::F32, 4, n, d),
            &layout,
            &options,
        )
        .unwrap_err();
    assert!(error.to_string().contains("the buffer holds"), "{error}");
    let unbound = context.device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: (4 * n * d * 4) as u64,
        usage: wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let error = compressor
        .compress_on_gpu(
            GpuTokens::new(&unbound, Dtype::F32, 4, n, d),
            &layout,
            &options,
        )
        .unwrap_err();
    assert!(error.to_string().contains("expected STORAGE"), "{error}");
    assert_eq!(
        compressor.memory().unwrap(),
        before,
        "a refused call touched the device"
    );
    // Within the budget, the call runs.
    compressor.set_memory_budget(Some(needed));
    compressor.compress(&features, &layout, &options).unwrap();
}

#[test]
fn a_lost_device_is_reported_and_a_new_compressor_works() {
    let Some(context) = gpu() else { return };
    let (_, mut rng) = seeded("device_lost");
    let weights = weights(&mut rng, 7, 3, None);
    let layout = Layout::square(16).unwrap();
    let features = features(&mut rng, 1, 16, 7);
    // A device of its own, so destroying it leaves the other tests' alone.
    let own =
        GpuContext::open(metacompress::gpu::GpuApi::Any, Some(&context.adapter.name)).unwrap();
    let compressor = Compressor::on_context(weights.clone(), own.clone(), Precision::F32).unwrap();
    compressor
        .compress(&features, &layout, &Options::default())
        .unwrap();
    own.device.destroy();
    let _ = own.device.poll(wgpu::PollType::Poll);
    let error = compressor
        .compress(&features, &layout, &Options::default())
        .unwrap_err();
    assert!(matches!(error, Error::DeviceLost(_)), "{error}");
    assert!(compressor.device_lost().is_some());
    let fresh =
        GpuContext::open(metacompress::gpu::GpuApi::Any, Some(&context.adapter.name)).unwrap();
    let compressor = Compressor::on_context(weights, fresh, Precision::F32).unwrap();
    compressor
        .compress(&features, &layout, &Options::default())
        .unwrap();
}

//! The embedding runtime (issue 4): GPU-resident input and output, chunks past the binding
//! limit, one image cut into token ranges and query blocks, mixed-layout batches in one
//! submission, async calls, the memory a compressor holds over many calls, threads sharing
//! one compressor, refusals before any device work, device loss. Fresh random inputs each
//! run (seed printed), outputs poisoned with NaN.

mod common;

use std::sync::Arc;

use common::{assert_reference, features, gpu, grid, relative_error, seeded, weights};
use half::{bf16, f16};
use metacompress::gpu::GpuContext;
use metacompress::{
    Compressed, Compressor, Dtype, Error, Features, GpuTokens, HostTokens, Keep, Layout, Options,
    PMeta, Precision, Scope, SplitK, Tokens,
};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use wgpu::util::DeviceExt;

/// Options that hand `P` back and poison every output.
fn checked(keep: f64) -> Options {
    Options {
        keep: Keep::new(keep).unwrap(),
        save_projection: true,
        poison: true,
        ..Options::default()
    }
}

/// A storage buffer on `context`'s device holding `bytes`.
fn device_buffer(context: &GpuContext, bytes: &[u8]) -> wgpu::Buffer {
    context
        .device
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("application features"),
            contents: bytes,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
        })
}

/// Asserts two results hold the same bits.
fn assert_same(a: &Compressed, b: &Compressed, what: &str) {
    assert_eq!(a.queries.count, b.queries.count, "{what}: m");
    assert_eq!(a.batch, b.batch, "{what}: batch");
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&a.tokens), bits(&b.tokens), "{what}: tokens differ");
    assert_eq!(
        a.projection.as_deref().map(bits),
        b.projection.as_deref().map(bits),
        "{what}: P differs"
    );
    assert!(a.tokens.iter().all(|v| v.is_finite()), "{what}: NaN left");
}

/// Checks `out` against the float64 reference on `features`.
fn odd(rng: &mut ChaCha8Rng, range: std::ops::Range<usize>) -> usize {
    rng.random_range(range) | 1
}

/// `batch` random images on one square grid of odd side, odd width, 6 channels.
fn square_case(
    rng: &mut ChaCha8Rng,
    batch: usize,
    table: (usize, usize),
) -> (usize, usize, PMeta, Features, Layout) {
    let (side, d) = (odd(rng, 5..9), odd(rng, 9..21));
    let n = side * side;
    let weights = weights(rng, d, 6, Some(table));
    let features = features(rng, batch, n, d);
    (n, d, weights, features, Layout::square(n).unwrap())
}

#[test]
fn compressor_is_send_and_sync() {
    fn shared<T: Send + Sync>() {}
    shared::<Compressor>();
    shared::<GpuContext>();
}

#[test]
fn gpu_resident_calls_give_the_tokens_of_host_calls() {
    let Some(context) = gpu() else { return };
    let (seed, mut rng) = seeded("gpu_resident");
    let batch = 3;
    let (n, d, weights, features, layout) = square_case(&mut rng, batch, (4, 5));
    let options = checked(0.3);
    let mut precisions = vec![Precision::F32];
    if context.has_f16() {
        precisions.push(Precision::F16);
    }
    for precision in precisions {
        let compressor =
            Compressor::on_context(weights.clone(), context.clone(), precision).unwrap();
        let values = features.values();
        // Each source dtype at an aligned and at a misaligned offset (in elements).
        for dtype in [Dtype::F32, Dtype::F16, Dtype::BF16] {
            for lead in [0usize, 3] {
                let what = format!("seed {seed}: {precision:?} from {dtype:?} after {lead}");
                let (host, bytes) = match dtype {
                    Dtype::F32 => (values.to_vec(), bytemuck::cast_slice(values).to_vec()),
                    Dtype::F16 => {
                        let v: Vec<f16> = values.iter().map(|&x| f16::from_f32(x)).collect();
                        (
                            v.iter().map(|x| x.to_f32()).collect(),
                            bytemuck::cast_slice(&v).to_vec(),
                        )
                    }
                    Dtype::BF16 => {
                        let v: Vec<bf16> = values.iter().map(|&x| bf16::from_f32(x)).collect();
                        (
                            v.iter().map(|x| x.to_f32()).collect(),
                            bytemuck::cast_slice(&v).to_vec(),
                        )
                    }
                };
                let mut padded = vec![0xAB; lead * dtype.size()];
                padded.extend(&bytes);
                padded.resize(padded.len().next_multiple_of(4), 0);
                let buffer = device_buffer(&context, &padded);
                let tokens = GpuTokens::new(&buffer, dtype, batch, n, d)
                    .at_offset((lead * dtype.size()) as u64);
                let resident = compressor
                    .compress_on_gpu(tokens, &layout, &options)
                    .unwrap();
                assert_eq!(resident.dtype, precision.elem().dtype());
                let from_gpu = compressor.read_back(&resident).unwrap();
                let host = Features::new(batch, n, d, host).unwrap();
                let from_host = compressor.compress(&host, &layout, &options).unwrap();
                assert_same(&from_gpu, &from_host, &what);
                let tolerance = if precision == Precision::F16 {
                    1e-2
                } else {
                    1e-4
                };
                assert_reference(
                    &from_gpu, &host, &weights, &layout, &options, tolerance, &what,
                );
            }
        }
    }
}

#[test]
fn host_tokens_in_f16_and_bf16_are_compressed_as_their_values() {
    let Some(context) = gpu() else { return };
    let (seed, mut rng) = seeded("host_dtypes");
    let (n, d) = (49, odd(&mut rng, 9..19));
    let weights = weights(&mut rng, d, 5, None);
    let features = features(&mut rng, 2, n, d);
    let layout = Layout::square(n).unwrap();
    let options = checked(0.2);
    let compressor = Compressor::on_context(weights.clone(), context, Precision::F32).unwrap();
    let halves: Vec<f16> = features
        .values()
        .iter()
        .map(|&x| f16::from_f32(x))
        .collect();
    let brains: Vec<bf16> = features
        .values()
        .iter()
        .map(|&x| bf16::from_f32(x))
        .collect();
    for (tokens, widened) in [
        (
            HostTokens::new(halves.as_slice(), 2, n, d).unwrap(),
            halves.iter().map(|x| x.to_f32()).collect::<Vec<_>>(),
        ),
        (
            HostTokens::new(brains.as_slice(), 2, n, d).unwrap(),
            brains.iter().map(|x| x.to_f32()).collect(),
        ),
    ] {
        let what = format!("seed {seed}: {:?}", tokens.values().dtype());
        let out = compressor
            .compress_tokens(tokens.into(), &layout, &options)
            .unwrap();
        let widened = Features::new(2, n, d, widened).unwrap();
        let expected = compressor.compress(&widened, &layout, &options).unwrap();
        assert_same(&out, &expected, &what);
    }
    // A NaN in an f16 slice is named by its index.
    let mut bad = halves.clone();
    bad[n * d + 2 * d + 1] = f16::NAN;
    let error = HostTokens::new(bad.as_slice(), 2, n, d).unwrap_err();
    assert_eq!(
        error.to_string(),
        "features[1, 2, 1] is NaN; expected finite values"
    );
}

#[test]
fn chunked_calls_give_the_tokens_of_unchunked_ones() {
    let Some(context) = gpu() else { return };
    let (seed, mut rng) = seeded("chunked");
    let batch = 5;
    let (n, d, weights, features, layout) = square_case(&mut rng, batch, (3, 3));
    let whole = checked(0.3);
    let compressor =
        Compressor::on_context(weights.clone(), context.clone(), Precision::F32).unwrap();
    let unchunked = compressor.compress(&features, &layout, &whole).unwrap();
    // A binding limit of two images' largest buffer (features or scores): chunks of 2, 2, 1.
    let m = layout.queries(whole.keep).count;
    let image = 4 * [n * d, m * n, m * d, n * 6].into_iter().max().unwrap();
    let chunked_options = Options {
        max_binding_bytes: Some((2 * image) as u64),
        ..whole
    };
    let chunked = compressor
        .compress(&features, &layout, &chunked_options)
        .unwrap();
    assert_same(
        &chunked,
        &unchunked,
        &format!("seed {seed}: host, chunks of 2"),
    );
    // The same from a device buffer: bound in place (f32), and through the ingest kernel.
    let buffer = device_buffer(&context, bytemuck::cast_slice(features.values()));
    let tokens = GpuTokens::new(&buffer, Dtype::F32, batch, n, d);
    let resident = compressor
        .compress_on_gpu(tokens, &layout, &chunked_options)
        .unwrap();
    let from_gpu = compressor.read_back(&resident).unwrap();
    assert_same(
        &from_gpu,
        &unchunked,
        &format!("seed {seed}: device, chunks of 2"),
    );
    let halves: Vec<f16> = features
        .values()
        .iter()
        .map(|&x| f16::from_f32(x))
        .collect();
    let buffer = device_buffer(&context, bytemuck::cast_slice(&halves));
    let tokens = GpuTokens::new(&buffer, Dtype::F16, batch, n, d);
    let chunked = compressor
        .compress_tokens(tokens.into(), &layout, &chunked_options)
        .unwrap();
    let host = HostTokens::new(halves.as_slice(), batch, n, d).unwrap();
    let unchunked = compressor
        .compress_tokens(host.into(), &layout, &whole)
        .unwrap();
    assert_same(
        &chunked,
        &unchunked,
        &format!("seed {seed}: f16 ingest, chunks"),
    );
    // f16 storage with an odd m x d: chunks are kept even so their copies stay aligned.
    if context.has_f16() {
        let compressor =
            Compressor::on_context(weights.clone(), context.clone(), Precision::F16).unwrap();
        let keep = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
            .into_iter()
            .map(|k| Keep::new(k).unwrap())
            .find(|&k| layout.queries(k).count % 2 == 1)
            .expect("a keep fraction with an odd query count");
        let whole = Options { keep, ..whole };
        let unchunked = compressor.compress(&features, &layout, &whole).unwrap();
        let m = unchunked.queries.count;
        assert_eq!((m * d) % 2, 1, "m x d should be odd");
        // The largest binding one image needs (f16 tokens, f32 scores and queries).
        let image = [n * d * 2, m * n * 4, m * d * 4, m * 6 * 4, n * 6 * 2]
            .into_iter()
            .max()
            .unwrap();
        let chunked_options = Options {
            max_binding_bytes: Some((image + 2) as u64),
            ..whole
        };
        let error = compressor
            .compress(&features, &layout, &chunked_options)
            .unwrap_err();
        assert!(matches!(error, Error::TooLarge(_)), "{error}");
        let chunked_options = Options {
            max_binding_bytes: Some((2 * image) as u64),
            ..whole
        };
        let chunked = compressor
            .compress(&features, &layout, &chunked_options)
            .unwrap();
        assert_same(
            &chunked,
            &unchunked,
            &format!("seed {seed}: f16, chunks of 2"),
        );
    }
}

/// Three layouts: a square grid (the largest), two anyres grids with loose tokens, a small
/// square.
fn mixed_groups(rng: &mut ChaCha8Rng, d: usize) -> Vec<(Features, Layout)> {
    let a = odd(rng, 7..11);
    let square = Layout::square(a * a).unwrap();
    let anyres = Layout::new(
        3 + 16 + 3 + 20 + 2,
        vec![grid(3, 4, 4), grid(3 + 16 + 3, 4, 5)],
    )
    .unwrap();
    let small = Layout::square(9).unwrap();
    [(2, square), (1, anyres), (3, small)]
        .into_iter()
        .map(|(batch, layout)| (features(rng, batch, layout.tokens(), d), layout))
        .collect()
}

#[test]
fn a_mixed_layout_batch_equals_the_groups_one_by_one() {
    let Some(context) = gpu() else { return };
    let (seed, mut rng) = seeded("mixed_batch");
    let d = odd(&mut rng, 9..21);
    let weights = weights(&mut rng, d, 6, Some((4, 4)));
    let groups = mixed_groups(&mut rng, d);
    let compressor =
        Compressor::on_context(weights.clone(), context.clone(), Precision::F32).unwrap();
    for scope in [Scope::Image, Scope::Grid] {
        let options = Options {
            scope,
            ..checked(0.25)
        };
        // The middle group from a device buffer.
        let buffer = device_buffer(&context, bytemuck::cast_slice(groups[1].0.values()));
        let (b, n) = (groups[1].0.batch(), groups[1].0.tokens());
        let batch: Vec<(Tokens, &Layout)> = groups
            .iter()
            .enumerate()
            .map(|(i, (features, layout))| {
                let tokens = if i == 1 {
                    GpuTokens::new(&buffer, Dtype::F32, b, n, d).into()
                } else {
                    features.into()
                };
                (tokens, layout)
            })
            .collect();
        let together = compressor.compress_batch(&batch, &options).unwrap();
        assert_eq!(together.len(), groups.len());
        for (i, ((features, layout), out)) in groups.iter().zip(&together).enumerate() {
            let what = format!("seed {seed}: {scope:?} group {i}");
            let alone = compressor.compress(features, layout, &options).unwrap();
            assert_same(out, &alone, &what);
            assert_reference(out, features, &weights, layout, &options, 1e-4, &what);
        }
        // The same batch through the async form, and cut into chunks.
        let later = pollster::block_on(compressor.compress_async(&batch, &options).unwrap());
        // Room for one image of the largest group (the first, cut into chunks of one), and
        // the copy kernel's window.
        let largest = groups
            .iter()
            .map(|(_, layout)| {
                let (n, m) = (layout.tokens(), layout.queries(options.keep).count);
                4 * [n * d, m * n, m * d, n * 6].into_iter().max().unwrap()
            })
            .max()
            .unwrap();
        let chunked = Options {
            max_binding_bytes: Some((largest + 512) as u64),
            ..options
        };
        let cut = compressor.compress_batch(&batch, &chunked).unwrap();
        for (i, ((out, later), cut)) in together.iter().zip(&later.unwrap()).zip(&cut).enumerate() {
            assert_same(later, out, &format!("seed {seed}: async group {i}"));
            assert_same(cut, out, &format!("seed {seed}: chunked group {i}"));
        }
    }
}

#[test]
fn split_k_calls_match_whole_ones_and_allocate_what_they_announce() {
    let Some(context) = gpu() else { return };
    let (seed, mut rng) = seeded("split_k");
    // Three images in chunks of 2 and 1 (the last chunk has fewer workgroups, so its
    // products get more pieces: the scratch is sized for the larger of the two).
    let batch = 3;
    let (side, d) = (odd(&mut rng, 9..15), odd(&mut rng, 41..91));
    let n = side * side;
    let weights = weights(&mut rng, d, 37, Some((3, 5)));
    let features = features(&mut rng, batch, n, d);
    let layout = Layout::square(n).unwrap();
    let whole = checked(0.2);
    let m = layout.queries(whole.keep).count;
    let image = 4 * [n * d, m * n, m * d, n * 37].into_iter().max().unwrap();
    let chunked = Options {
        max_binding_bytes: Some((2 * image) as u64),
        ..whole
    };
    for precision in [Precision::F32, Precision::F16] {
        if precision == Precision::F16 && !context.has_f16() {
            continue;
        }
        let fresh = || Compressor::on_context(weights.clone(), context.clone(), precision);
        let compressor = fresh().unwrap();
        let tolerance = if precision == Precision::F32 {
            1e-4
        } else {
            1e-2
        };
        let unsplit = compressor.compress(&features, &layout, &chunked).unwrap();
        let plain_bytes = compressor
            .call_bytes(&[((&features).into(), &layout)], &chunked)
            .unwrap();
        let pieces = rng.random_range(2..6);
        for options in [whole, chunked] {
            let split = Options {
                split_k: SplitK::Pieces(pieces),
                profile: true,
                ..options
            };
            let what = format!(
                "seed {seed}: n {n} d {d} m {m} {precision:?} {pieces} pieces, binding limit \
                 {:?}",
                options.max_binding_bytes
            );
            // A fresh compressor, so that its peak is this call's.
            let compressor = fresh().unwrap();
            let weight_bytes = compressor.held_bytes();
            let call_bytes = compressor
                .call_bytes(&[((&features).into(), &layout)], &split)
                .unwrap();
            let out = compressor.compress(&features, &layout, &split).unwrap();
            let peak = compressor.memory().unwrap().peak_bytes - weight_bytes;
            assert!(
                peak >= call_bytes && peak <= call_bytes + 8192,
                "{what}: announced {call_bytes} bytes, the call peaked at {peak}"
            );
            assert_reference(&out, &features, &weights, &layout, &split, tolerance, &what);
            let unsplit: Vec<f64> = unsplit.tokens.iter().map(|&v| v as f64).collect();
            let error = relative_error(&out.tokens, &unsplit);
            assert!(error < tolerance / 10.0, "{what}: {error:e} from unsplit");
            // The products did split: their partial products were summed.
            let steps = &out.profile.as_ref().expect("profiled").steps;
            let sums = steps.iter().filter(|s| s.name == "split_sum").count();
            assert!(sums >= 1, "{what}: no product split");
            if options.max_binding_bytes.is_some() {
                assert!(
                    call_bytes > plain_bytes,
                    "{what}: the scratch is not counted"
                );
            }
            // The same in place on the device, outputs handed over without a wait (whole:
            // chunked f16 outputs of odd size from a device buffer are refused: plan.rs `even`).
            if options.max_binding_bytes.is_some() {
                continue;
            }
            let buffer = device_buffer(&context, bytemuck::cast_slice(features.values()));
            let tokens = GpuTokens::new(&buffer, Dtype::F32, batch, n, d);
            let resident = compressor.compress_on_gpu(tokens, &layout, &split).unwrap();
            let back = compressor.read_back(&resident).unwrap();
            let error = relative_error(&back.tokens, &unsplit);
            assert!(
                error < tolerance / 10.0,
                "{what}: resident {error:e} from unsplit"
            );
        }
    }
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

#[test]
fn a_batch_of_sixteen_llava_next_images_in_f32_passes_the_binding_limit_in_chunks() {
    let Some(context) = gpu() else { return };
    let (seed, mut rng) = seeded("sixteen_llava_next");
    let workload = metacompress::bench::workloads("llava-next-7b").unwrap()[0];
    let (batch, n, d) = (16, workload.tokens, workload.width);
    let layout = workload.layout().unwrap();
    // Few queries and channels keep the arithmetic small for lavapipe; the features are the
    // real size: 16 x 2928 x 4096 f32 = 767 MB, past one binding on every device.
    let weights = metacompress::PMeta::init(d, 8, Some((24, 24)), 1.0, seed).unwrap();
    let features = features(&mut rng, batch, n, d);
    let compressor =
        Compressor::on_context(weights.clone(), context.clone(), Precision::F32).unwrap();
    let options = Options {
        keep: Keep::new(0.005).unwrap(),
        poison: true,
        ..Options::default()
    };
    let bytes = (batch * n * d * 4) as u64;
    assert!(
        bytes > context.binding_limit(),
        "the batch should pass one binding"
    );
    let out = compressor.compress(&features, &layout, &options).unwrap();
    let m = out.queries.count;
    assert_eq!(out.tokens.len(), batch * m * d);
    // First, a middle and the last image against the float64 reference.
    for image in [0, 9, 15] {
        let one = Features::new(1, n, d, features.image(image).to_vec()).unwrap();
        let alone = Compressed {
            tokens: out.tokens[image * m * d..(image + 1) * m * d].to_vec(),
            projection: None,
            batch: 1,
            ..out.clone()
        };
        let what = format!("seed {seed}: image {image} of 16");
        assert_reference(&alone, &one, &weights, &layout, &options, 1e-4, &what);
    }
}

#[test]
fn a_buffer_from_another_device_is_a_gpu_error_not_a_panic() {
    let Some(context) = gpu() else { return };
    let (_, mut rng) = seeded("other_device");
    let (n, d) = (16, 7);
    let weights = weights(&mut rng, d, 3, None);
    let layout = Layout::square(n).unwrap();
    let compressor = Compressor::on_context(weights, context.clone(), Precision::F32).unwrap();
    let other =
        GpuContext::open(metacompress::gpu::GpuApi::Any, Some(&context.adapter.name)).unwrap();
    let features = features(&mut rng, 1, n, d);
    let foreign = device_buffer(&other, bytemuck::cast_slice(features.values()));
    let error = compressor
        .compress_on_gpu(
            GpuTokens::new(&foreign, Dtype::F32, 1, n, d),
            &layout,
            &Options::default(),
        )
        .unwrap_err();
    assert!(matches!(error, Error::Gpu(_)), "{error}");
    // The compressor goes on working.
    compressor
        .compress(&features, &layout, &Options::default())
        .unwrap();
}

#[test]
fn a_safetensors_file_is_compressed_on_the_layout_of_its_metadata() {
    let Some(context) = gpu() else { return };
    let (seed, mut rng) = seeded("file_input");
    let d = odd(&mut rng, 9..21);
    let weights = weights(&mut rng, d, 6, Some((4, 4)));
    let (features, layout) = mixed_groups(&mut rng, d).swap_remove(1);
    let folder = std::env::temp_dir().join(format!("metacompress-runtime-{}", std::process::id()));
    std::fs::create_dir_all(&folder).unwrap();
    let path = folder.join("anyres.safetensors");
    metacompress::files::write_input(
        &path,
        &features,
        true,
        Dtype::BF16,
        Some(&layout.to_json()),
        None,
    )
    .unwrap();
    let compressor = Compressor::on_context(weights, context, Precision::F32).unwrap();
    let options = checked(0.25);
    let from_file = compressor.compress_file(&path, &options).unwrap();
    // The file holds bf16: the same values widened, on the layout of its metadata.
    let widened: Vec<f32> = features
        .values()
        .iter()
        .map(|&x| bf16::from_f32(x).to_f32())
        .collect();
    let widened = Features::new(features.batch(), features.tokens(), d, widened).unwrap();
    let expected = compressor.compress(&widened, &layout, &options).unwrap();
    assert_same(&from_file, &expected, &format!("seed {seed}: file"));
    std::fs::remove_dir_all(&folder).unwrap();
}

/// Two grids (odd sizes) with loose tokens after each: n = 540 + 3 + 117 + 2 = 662.
fn large_layout() -> Layout {
    Layout::new(662, vec![grid(0, 20, 27), grid(543, 9, 13)]).unwrap()
}

#[test]
fn one_image_past_the_binding_limit_is_cut_into_token_ranges_and_query_blocks() {
    let Some(context) = gpu() else { return };
    let (seed, mut rng) = seeded("one_image_past_the_binding_limit");
    let align = context.limits.min_storage_buffer_offset_alignment as usize;
    let layout = large_layout();
    let n = layout.tokens();
    let d = odd(&mut rng, 321..401);
    let weights = weights(&mut rng, d, 7, Some((3, 4)));
    let features = features(&mut rng, 2, n, d);
    for (keep, scope) in [(0.5, Scope::Image), (0.3, Scope::Grid)] {
        let options = Options {
            scope,
            profile: true,
            ..checked(keep)
        };
        let m = layout.queries(options.keep).count;
        // A binding that holds the whole pooled queries and a block of `align` rows of P,
        // but not one image's features: token ranges, and query blocks when m > align.
        let limit = (m * d * 4).max(align * n * 4) * 21 / 20;
        assert!(
            limit < n * d * 4,
            "seed {seed}: the features must pass the limit"
        );
        let split = Options {
            max_binding_bytes: Some(limit as u64),
            ..options
        };
        let what = format!("seed {seed}, keep {keep}, {scope:?}, limit {limit}");
        let compressor =
            Compressor::on_context(weights.clone(), context.clone(), Precision::F32).unwrap();
        // The plan's count holds for a split call too (parameters aside: 48 bytes a pass),
        // measured on the compressor's first call.
        let announced = compressor
            .call_bytes(&[((&features).into(), &layout)], &split)
            .unwrap();
        let held = compressor.held_bytes();
        let cut = compressor.compress(&features, &layout, &split).unwrap();
        let after = compressor.memory().unwrap();
        assert_eq!(
            after.live_bytes, held,
            "{what}: the split call left buffers"
        );
        let peak = after.peak_bytes - held;
        let whole = compressor.compress(&features, &layout, &options).unwrap();
        assert!(
            peak >= announced && peak <= announced + 16384,
            "{what}: announced {announced} bytes, the call peaked at {peak}"
        );
        let reductions = |c: &Compressed| {
            let profile = c.profile.as_ref().unwrap();
            profile
                .steps
                .iter()
                .filter(|s| s.name == "reduction")
                .count()
        };
        eprintln!(
            "{what}: align {align}, m {m}, reductions {} vs {}",
            reductions(&cut),
            reductions(&whole)
        );
        assert!(reductions(&cut) > reductions(&whole), "{what}: not split");
        assert_reference(&cut, &features, &weights, &layout, &split, 1e-4, &what);
        // The shared-memory products take the same strided, accumulating ranges.
        let shared = Options {
            kernels: metacompress::KernelVariant::Shared,
            ..split
        };
        let cut_shared = compressor.compress(&features, &layout, &shared).unwrap();
        assert_reference(
            &cut_shared,
            &features,
            &weights,
            &layout,
            &shared,
            1e-4,
            &what,
        );
        let expected: Vec<f64> = whole.tokens.iter().map(|&v| v as f64).collect();
        let error = relative_error(&cut.tokens, &expected);
        assert!(error < 1e-5, "{what}: split vs whole {error:e}");
        // From device buffers: bound in place (f32) and copied in by the ingest kernel (bf16
        // at an odd element offset), range by range.
        let direct = device_buffer(&context, bytemuck::cast_slice(features.values()));
        let tokens = GpuTokens::new(&direct, Dtype::F32, 2, n, d);
        let out = compressor.compress_on_gpu(tokens, &layout, &split).unwrap();
        let from_gpu = compressor.read_back(&out).unwrap();
        assert_reference(&from_gpu, &features, &weights, &layout, &split, 1e-4, &what);
        let halves: Vec<bf16> = std::iter::once(bf16::ZERO)
            .chain(features.values().iter().map(|&v| bf16::from_f32(v)))
            .collect();
        let rounded =
            Features::new(2, n, d, halves[1..].iter().map(|v| v.to_f32()).collect()).unwrap();
        let ingest = device_buffer(&context, bytemuck::cast_slice(&halves));
        let tokens = GpuTokens::new(&ingest, Dtype::BF16, 2, n, d).at_offset(2);
        let out = compressor.compress_on_gpu(tokens, &layout, &split).unwrap();
        let from_bf16 = compressor.read_back(&out).unwrap();
        assert_reference(&from_bf16, &rounded, &weights, &layout, &split, 1e-4, &what);
        if context.has_f16() {
            let half =
                Compressor::on_context(weights.clone(), context.clone(), Precision::F16).unwrap();
            let limit = limit / 2;
            let out = half
                .compress(
                    &features,
                    &layout,
                    &Options {
                        max_binding_bytes: Some(limit as u64),
                        ..split
                    },
                )
                .unwrap();
            assert_reference(&out, &features, &weights, &layout, &split, 1e-2, &what);
        }
    }
}

#[test]
fn one_image_of_9216_tokens_in_f32_passes_the_devices_own_binding_limit_in_ranges() {
    let Some(context) = gpu() else { return };
    let (seed, mut rng) = seeded("one_image_of_9216_tokens");
    // A 96x96 grid of width 4096 in f32: 151 MB for one image, past lavapipe's 128 MiB
    // binding (and most GPUs' default). Few queries and channels keep lavapipe's arithmetic
    // small; the features are the real size.
    let (n, d) = (96 * 96, 4096);
    let layout = Layout::square(n).unwrap();
    let weights = metacompress::PMeta::init(d, 8, Some((24, 24)), 1.0, seed).unwrap();
    let features = features(&mut rng, 1, n, d);
    // (An adapter that binds more runs it whole: the same check holds.)
    let compressor = Compressor::on_context(weights.clone(), context, Precision::F32).unwrap();
    let options = Options {
        keep: Keep::new(0.01).unwrap(),
        poison: true,
        ..Options::default()
    };
    let out = compressor.compress(&features, &layout, &options).unwrap();
    let what = format!("seed {seed}: one 96x96 image of width 4096");
    assert_reference(&out, &features, &weights, &layout, &options, 1e-4, &what);
}

//! The embedding runtime past the binding limit: batches in chunks, split-K calls, one image
//! cut into token ranges and query blocks, each the tokens of the whole call. Fresh random
//! inputs each run (seed printed), outputs poisoned with NaN.

mod common;

use common::runtime::{assert_same, checked, device_buffer, odd, square_case};
use common::{assert_reference, features, gpu, grid, relative_error, seeded, weights};
use half::{bf16, f16};
use metacompress::{
    Compressed, Compressor, Dtype, Error, Features, GpuTokens, HostTokens, Keep, Layout, Options,
    Precision, Scope, SplitK,
};
use rand::Rng;

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

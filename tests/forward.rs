//! The GPU forward pass against the float64 reference (SPEC section 7), on fresh random inputs
//! at odd sizes, with every GPU output buffer poisoned with NaN before each run.

mod common;

use common::{features, gpu, grid, relative_error, seeded, weights};
use metacompress::gpu::GpuContext;
use metacompress::{
    reference, Association, Compressor, Grid, Keep, KernelVariant, Layout, Options, PMeta,
    Precision, Scope, SplitK,
};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

struct Case {
    batch: usize,
    tokens: usize,
    grids: Vec<Grid>,
    width: usize,
    channels: usize,
    table: Option<(usize, usize)>,
    keep: f64,
    scope: Scope,
    precision: Precision,
}

impl Case {
    fn tolerance(&self) -> f64 {
        match self.precision {
            Precision::F32 => 1e-4,
            Precision::F16 | Precision::F16Acc | Precision::Bf16 => 1e-2,
        }
    }
}

/// Runs `case` on the GPU and the reference; returns both for further checks.
fn run(
    context: &GpuContext,
    rng: &mut ChaCha8Rng,
    seed: u64,
    case: &Case,
) -> (metacompress::Compressed, reference::Reference, PMeta) {
    let weights = weights(rng, case.width, case.channels, case.table);
    let features = features(rng, case.batch, case.tokens, case.width);
    let layout = Layout::new(case.tokens, case.grids.clone()).unwrap();
    let keep = Keep::new(case.keep).unwrap();
    let compressor =
        Compressor::on_context(weights.clone(), context.clone(), case.precision).unwrap();
    let queries = layout.queries(keep);
    let expected = reference::forward(&features, &weights, &layout, &queries, case.scope);
    let mut outputs = Vec::new();
    // Every kernel variant in both associations, each against the reference, then the
    // default choice without P handed back.
    // Then split-K (pieces of the inner dimensions, summed after) in both associations,
    // with and without P, for both tiled kernels.
    let no_split = SplitK::Off;
    let mut runs: Vec<(KernelVariant, Association, bool, SplitK)> = KernelVariant::ALL
        .iter()
        .flat_map(|&k| [Association::Keys, Association::Tokens].map(|a| (k, a, true, no_split)))
        .collect();
    runs.push((KernelVariant::Tuned, Association::Auto, false, no_split));
    let pieces = SplitK::Pieces(rng.random_range(2..7));
    for (kernels, association) in [
        (KernelVariant::Shared, Association::Keys),
        (KernelVariant::Shared, Association::Tokens),
        (KernelVariant::Tuned, Association::Keys),
        (KernelVariant::Tuned, Association::Tokens),
    ] {
        runs.push((
            kernels,
            association,
            association == Association::Keys,
            pieces,
        ));
    }
    // The last run with P: the tuned kernels, whole.
    runs.push((KernelVariant::Tuned, Association::Tokens, true, no_split));
    for (kernels, association, save_projection, split_k) in runs {
        let options = Options {
            keep,
            scope: case.scope,
            save_projection,
            poison: true,
            kernels,
            association,
            profile: false,
            max_binding_bytes: None,
            split_k,
        };
        let out = compressor.compress(&features, &layout, &options).unwrap();
        let describe = format!(
            "seed {seed}: batch {} n {} d {} d_c {} grids {:?} table {:?} keep {} scope {:?} \
             {:?} {kernels:?} {association:?} P {save_projection} split-K {split_k:?}",
            case.batch,
            case.tokens,
            case.width,
            case.channels,
            case.grids,
            case.table,
            case.keep,
            case.scope,
            case.precision
        );
        let tokens_error = relative_error(&out.tokens, &expected.tokens);
        assert!(
            tokens_error <= case.tolerance(),
            "{describe}: tokens error {tokens_error:e} > {:e}",
            case.tolerance()
        );
        let Some(projection) = &out.projection else {
            assert!(
                !save_projection,
                "{describe}: P asked for but not handed back"
            );
            eprintln!("{describe}: tokens error {tokens_error:.2e}");
            continue;
        };
        assert!(save_projection, "{describe}: P handed back unasked");
        let projection_error = relative_error(projection, &expected.projection);
        eprintln!(
            "{describe}: tokens error {tokens_error:.2e}, projection error {projection_error:.2e}"
        );
        assert!(
            projection_error <= case.tolerance(),
            "{describe}: projection error {projection_error:e} > {:e}",
            case.tolerance()
        );
        outputs.push(out);
    }
    let out = outputs.pop().expect("the tuned kernels ran last with P");
    (out, expected, weights)
}

/// A random odd size in `range` (never a multiple of 4).
fn odd(rng: &mut ChaCha8Rng, range: std::ops::Range<usize>) -> usize {
    loop {
        let value = rng.random_range(range.clone());
        if value % 4 != 0 && value % 2 == 1 {
            return value;
        }
    }
}

/// Two grids with loose tokens before, between and after them (like LLaVA-NeXT's newlines).
fn two_grid_layout(rng: &mut ChaCha8Rng) -> (usize, Vec<Grid>) {
    let first = grid(2, odd(rng, 3..8), odd(rng, 3..8));
    let second = grid(first.end() + 3, odd(rng, 3..10), odd(rng, 3..10));
    (second.end() + 5, vec![first, second])
}

#[test]
fn one_grid_at_odd_sizes_both_scopes() {
    let Some(context) = gpu() else { return };
    let (seed, mut rng) = seeded("one_grid_at_odd_sizes_both_scopes");
    for scope in [Scope::Image, Scope::Grid] {
        let (height, width) = (odd(&mut rng, 3..12), odd(&mut rng, 3..12));
        let case = Case {
            batch: 1,
            tokens: height * width,
            grids: vec![grid(0, height, width)],
            width: odd(&mut rng, 17..80),
            channels: odd(&mut rng, 3..24),
            table: None,
            keep: rng.random_range(0.05..0.6),
            scope,
            precision: Precision::F32,
        };
        run(&context, &mut rng, seed, &case);
    }
}

#[test]
fn several_grids_with_loose_tokens_and_a_resized_position_table() {
    let Some(context) = gpu() else { return };
    let (seed, mut rng) = seeded("several_grids_with_loose_tokens");
    for scope in [Scope::Image, Scope::Grid] {
        let (tokens, grids) = two_grid_layout(&mut rng);
        let largest = grids.iter().map(|g| g.height.max(g.width)).max().unwrap();
        let smallest = grids.iter().map(|g| g.height.min(g.width)).min().unwrap();
        // A table larger than every grid (resized down), smaller than every grid (resized
        // up), and the size of the first grid (used as it is there).
        for table in [
            (largest + 2, largest + 3),
            (smallest - 1, smallest - 2),
            (grids[0].height, grids[0].width),
        ] {
            let case = Case {
                batch: 1,
                tokens,
                grids: grids.clone(),
                width: odd(&mut rng, 9..40),
                channels: odd(&mut rng, 3..16),
                table: Some(table),
                keep: rng.random_range(0.1..0.7),
                scope,
                precision: Precision::F32,
            };
            run(&context, &mut rng, seed, &case);
        }
    }
}

/// Four times a random odd number in `range` (a multiple of 4, never of 8 or of a tile).
fn four_times_odd(rng: &mut ChaCha8Rng, range: std::ops::Range<usize>) -> usize {
    4 * odd(rng, range)
}

#[test]
fn vec4_kernels_at_multiples_of_four_that_are_not_multiples_of_the_tile() {
    // Widths, channels and token counts that are multiples of 4 send every tuned product to
    // the vec4 kernels (the odd sizes elsewhere send them to the scalar ones); the 32 x 32
    // tile still ends part-way through rows and columns. Batched, both precisions.
    let Some(context) = gpu() else { return };
    let (seed, mut rng) = seeded("vec4_kernels");
    for precision in [Precision::F32, Precision::F16, Precision::F16Acc] {
        if precision != Precision::F32 && !context.has_f16() {
            eprintln!("SKIPPED f16 half: adapter has no SHADER_F16");
            assert!(
                std::env::var_os("CI").is_none(),
                "CI's lavapipe offers SHADER_F16"
            );
            continue;
        }
        let height = odd(&mut rng, 3..10);
        let width = four_times_odd(&mut rng, 1..4);
        let second = grid(
            height * width + 4,
            odd(&mut rng, 3..8),
            four_times_odd(&mut rng, 1..3),
        );
        let case = Case {
            batch: 2,
            tokens: second.end() + 4,
            grids: vec![grid(0, height, width), second],
            width: four_times_odd(&mut rng, 9..21),
            channels: four_times_odd(&mut rng, 3..9),
            table: Some((6, 5)),
            keep: rng.random_range(0.1..0.6),
            scope: Scope::Image,
            precision,
        };
        assert_eq!(case.tokens % 4, 0);
        run(&context, &mut rng, seed, &case);
    }
}

#[test]
fn a_batch_of_images() {
    let Some(context) = gpu() else { return };
    let (seed, mut rng) = seeded("a_batch_of_images");
    let (tokens, grids) = two_grid_layout(&mut rng);
    let case = Case {
        batch: 3,
        tokens,
        grids,
        width: odd(&mut rng, 9..40),
        channels: odd(&mut rng, 3..16),
        table: Some((5, 5)),
        keep: 0.25,
        scope: Scope::Grid,
        precision: Precision::F32,
    };
    run(&context, &mut rng, seed, &case);
}

#[test]
fn more_tokens_than_a_workgroup_holds() {
    // 24x24 + loose: the softmax rows span several strides of its 256 lanes.
    let Some(context) = gpu() else { return };
    let (seed, mut rng) = seeded("more_tokens_than_a_workgroup_holds");
    let case = Case {
        batch: 1,
        tokens: 581,
        grids: vec![grid(0, 24, 24)],
        width: odd(&mut rng, 33..70),
        channels: odd(&mut rng, 9..24),
        table: Some((7, 9)),
        keep: 0.1,
        scope: Scope::Image,
        precision: Precision::F32,
    };
    run(&context, &mut rng, seed, &case);
}

#[test]
fn f16_storage_stays_within_its_bound() {
    let Some(context) = gpu() else { return };
    if !context.has_f16() {
        eprintln!(
            "SKIPPED f16: adapter {} lacks SHADER_F16",
            context.adapter.name
        );
        assert!(
            std::env::var_os("CI").is_none(),
            "CI's lavapipe offers SHADER_F16"
        );
        return;
    }
    let (seed, mut rng) = seeded("f16_storage_stays_within_its_bound");
    for (scope, precision) in [
        (Scope::Image, Precision::F16),
        (Scope::Grid, Precision::F16),
        (Scope::Image, Precision::F16Acc),
        (Scope::Grid, Precision::F16Acc),
    ] {
        let (tokens, grids) = two_grid_layout(&mut rng);
        let case = Case {
            batch: 2,
            tokens,
            grids,
            width: odd(&mut rng, 17..64),
            channels: odd(&mut rng, 3..20),
            table: Some((4, 6)),
            keep: rng.random_range(0.1..0.5),
            scope,
            precision,
        };
        run(&context, &mut rng, seed, &case);
    }
}

#[test]
fn f16_accumulation_stays_within_the_f16_bound_over_a_long_inner_dimension() {
    // The reduction sums over n: with n in the thousands, one f16 sum over all of it would
    // lose far more than an f32 one; f16-acc sums runs of 64 in f16 and must meet SPEC 7's
    // f16 bound with room to spare. The same inputs at f16 (f32 sums) and f16-acc
    // must differ, or the variant is not summing in f16. Multiples of 4 (vec4 kernels), then
    // odd sizes (scalar ones).
    let Some(context) = gpu() else { return };
    if !context.has_f16() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI's lavapipe offers SHADER_F16"
        );
        return;
    }
    let (seed, mut rng) = seeded("f16_accumulation");
    let sizes = [
        (
            four_times_odd(&mut rng, 9..12),
            four_times_odd(&mut rng, 9..16),
        ),
        (odd(&mut rng, 39..49), odd(&mut rng, 37..65)),
    ];
    for (side, width) in sizes {
        let height = odd(&mut rng, 31..45);
        let case = |precision| Case {
            batch: 1,
            tokens: height * side,
            grids: vec![grid(0, height, side)],
            width,
            channels: 37,
            table: Some((5, 5)),
            keep: 0.1,
            scope: Scope::Image,
            precision,
        };
        let inputs = rng.clone();
        let (f16_sums_f32, expected, _) =
            run(&context, &mut inputs.clone(), seed, &case(Precision::F16));
        let (f16_sums_f16, _, _) = run(
            &context,
            &mut inputs.clone(),
            seed,
            &case(Precision::F16Acc),
        );
        let errors =
            [&f16_sums_f32, &f16_sums_f16].map(|out| relative_error(&out.tokens, &expected.tokens));
        eprintln!(
            "seed {seed}: d {width}, n {}: tokens error with f32 sums {:.2e}, f16 sums {:.2e}",
            height * side,
            errors[0],
            errors[1]
        );
        assert_ne!(
            f16_sums_f32.tokens, f16_sums_f16.tokens,
            "seed {seed}: d {width}: f16-acc gave the f16 path's tokens bit for bit"
        );
        // Runs of 64 inner steps in f16, summed in f32: the error stays near the f16
        // storage's own instead of growing with n (one f16 sum over n: 5-15 times it).
        assert!(
            errors[1] <= 4.0 * errors[0],
            "seed {seed}: d {width}: f16-acc error {:.2e} against {:.2e} with f32 sums",
            errors[1],
            errors[0]
        );
    }
}

#[test]
fn huge_omega_prunes_each_reduced_token_is_an_input_token() {
    // omega x 1e8: scores a millionth apart already differ by 100 in the exponent, so only an
    // exact tie (never seen) could leave a row that is not one-hot.
    let Some(context) = gpu() else { return };
    let (seed, mut rng) = seeded("huge_omega_prunes");
    let (tokens, grids) = two_grid_layout(&mut rng);
    let (width, channels) = (odd(&mut rng, 9..40), odd(&mut rng, 5..16));
    let weights = weights(&mut rng, width, channels, None)
        .with_omega_scaled(1e8)
        .unwrap();
    let features = features(&mut rng, 1, tokens, width);
    let layout = Layout::new(tokens, grids).unwrap();
    let compressor = Compressor::on_context(weights, context, Precision::F32).unwrap();
    let options = Options {
        keep: Keep::new(0.3).unwrap(),
        save_projection: true,
        poison: true,
        ..Options::default()
    };
    let out = compressor.compress(&features, &layout, &options).unwrap();
    let projection = out.projection.unwrap();
    for (i, row) in projection.chunks_exact(tokens).enumerate() {
        let ones: Vec<usize> = (0..tokens).filter(|&j| row[j] == 1.0).collect();
        let zeros = row.iter().filter(|&&p| p == 0.0).count();
        assert_eq!(
            ones.len(),
            1,
            "seed {seed}: row {i} of P is not one-hot: {row:?}"
        );
        assert_eq!(
            zeros,
            tokens - 1,
            "seed {seed}: row {i} of P is not one-hot"
        );
        let kept = &features.image(0)[ones[0] * width..][..width];
        assert_eq!(
            &out.tokens[i * width..][..width],
            kept,
            "seed {seed}: token {i}"
        );
    }
}

#[test]
fn keep_one_keeps_every_token_and_rows_sum_to_one() {
    let Some(context) = gpu() else { return };
    let (seed, mut rng) = seeded("keep_one_keeps_every_token");
    let (height, width) = (odd(&mut rng, 3..9), odd(&mut rng, 3..9));
    let case = Case {
        batch: 1,
        tokens: height * width,
        grids: vec![grid(0, height, width)],
        width: odd(&mut rng, 9..40),
        channels: odd(&mut rng, 3..12),
        table: Some((3, 4)),
        keep: 1.0,
        scope: Scope::Image,
        precision: Precision::F32,
    };
    let (out, _, _) = run(&context, &mut rng, seed, &case);
    assert_eq!(out.queries.count, case.tokens);
    for (i, row) in out
        .projection
        .unwrap()
        .chunks_exact(case.tokens)
        .enumerate()
    {
        let sum: f64 = row.iter().map(|&p| p as f64).sum();
        assert!(
            (sum - 1.0).abs() < 1e-5,
            "seed {seed}: row {i} sums to {sum}"
        );
        assert!(
            row.iter().all(|&p| p >= 0.0),
            "seed {seed}: row {i} has a negative"
        );
    }
}

#[test]
fn grid_scope_puts_exact_zeros_outside_the_query_grid() {
    let Some(context) = gpu() else { return };
    let (seed, mut rng) = seeded("grid_scope_exact_zeros");
    let (tokens, grids) = two_grid_layout(&mut rng);
    let case = Case {
        batch: 2,
        tokens,
        grids,
        width: odd(&mut rng, 9..30),
        channels: odd(&mut rng, 3..12),
        table: None,
        keep: 0.4,
        scope: Scope::Grid,
        precision: Precision::F32,
    };
    let (out, _, _) = run(&context, &mut rng, seed, &case);
    let projection = out.projection.unwrap();
    let m = out.queries.count;
    for image in 0..case.batch {
        for query in 0..m {
            let keys = out.queries.keys(query, Scope::Grid, tokens);
            let row = &projection[(image * m + query) * tokens..][..tokens];
            for (j, p) in row.iter().enumerate() {
                if keys.contains(j) {
                    assert!(
                        *p > 0.0,
                        "seed {seed}: P[{query}, {j}] = {p} inside its grid"
                    );
                } else {
                    assert_eq!(*p, 0.0, "seed {seed}: P[{query}, {j}] outside its grid");
                }
            }
            let sum: f64 = row.iter().map(|&p| p as f64).sum();
            assert!(
                (sum - 1.0).abs() < 1e-5,
                "seed {seed}: row {query} sums to {sum}"
            );
        }
    }
}

#[test]
fn an_image_whose_p_passes_the_binding_limit_is_split_and_what_cannot_be_fails_cleanly() {
    let Some(context) = gpu() else { return };
    let (seed, mut rng) = seeded("binding_limit");
    // keep 1 on a 77x77 grid: P is 5929 x 5929 f32 = 141 MB for one image, past lavapipe's
    // 128 MiB binding, while the features (width 3) stay small: P is cut into query blocks.
    let limit = context.binding_limit();
    let fewest_tokens = ((limit / 4) as f64).sqrt() as usize + 1;
    let side = (fewest_tokens as f64).sqrt().ceil() as usize;
    let tokens = side * side;
    let weights = weights(&mut rng, 3, 2, None);
    let features = features(&mut rng, 1, tokens, 3);
    let layout = Layout::square(tokens).unwrap();
    let compressor = Compressor::on_context(weights.clone(), context, Precision::F32).unwrap();
    let options = Options {
        keep: Keep::new(1.0).unwrap(),
        poison: true,
        ..Options::default()
    };
    let reduced = compressor.compress(&features, &layout, &options).unwrap();
    let queries = layout.queries(options.keep);
    let expected = reference::forward(&features, &weights, &layout, &queries, options.scope);
    let error = relative_error(&reduced.tokens, &expected.tokens);
    assert!(error <= 1e-4, "seed {seed}: tokens off by {error:e}");
    // A binding too small for even the keys: refused before any device work.
    let before = compressor.memory().unwrap();
    let tiny = Options {
        max_binding_bytes: Some(1000),
        ..options
    };
    let error = compressor.compress(&features, &layout, &tiny).unwrap_err();
    assert!(matches!(error, metacompress::Error::TooLarge(_)), "{error}");
    assert!(error.to_string().contains("the keys"), "{error}");
    assert_eq!(
        compressor.memory().unwrap().buffers_created,
        before.buffers_created,
        "the refused call created buffers"
    );
}

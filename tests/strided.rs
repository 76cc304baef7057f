//! Strided grids (SPEC section 3, v2) on every path: the float64 reference, the CPU path, the
//! GPU at f32 and f16 (every kernel variant, both associations, outputs poisoned), an image
//! cut into token ranges, and every baseline method; fresh random layouts whose grids
//! interleave their rows, with loose tokens between rows, at odd sizes. And the permutation
//! test: a strided layout gives the tokens of the contiguous layout of the permuted input.

mod common;

use common::methods as reference_methods;
use common::{assert_reference, features, gpu, relative_error, runners, seeded, weights};
use metacompress::methods::{Method, Request};
use metacompress::{
    reference, Association, Backend, Compressed, Compressor, Features, Grid, Keep, KernelVariant,
    Layout, Options, Precision, Scope,
};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// A random odd size in `range`.
fn odd(rng: &mut ChaCha8Rng, range: std::ops::Range<usize>) -> usize {
    loop {
        let value = rng.random_range(range.clone());
        if value % 2 == 1 {
            return value;
        }
    }
}

/// Two grids whose rows interleave (`A` then `B` in every period of `stride` tokens, loose
/// tokens after each), then a LLaVA-NeXT-like grid with one loose token after each row, then
/// loose tokens: strides > w, interleaved rows, loose tokens between rows, odd sizes.
fn strided_layout(rng: &mut ChaCha8Rng) -> Layout {
    let (width_a, width_b) = (odd(rng, 3..8), odd(rng, 3..7));
    let gap = rng.random_range(0..3);
    let stride = width_a + gap + width_b + rng.random_range(1..3);
    let start = rng.random_range(0..3);
    let a = Grid::strided(start, odd(rng, 3..8), width_a, stride);
    let b = Grid::strided(start + width_a + gap, odd(rng, 3..8), width_b, stride);
    let width_c = odd(rng, 3..9);
    let c = Grid::strided(
        a.end().max(b.end()) + 1,
        odd(rng, 3..7),
        width_c,
        width_c + 1,
    );
    Layout::new(c.end() + rng.random_range(1..4), vec![a, b, c]).unwrap()
}

/// The same grids laid out contiguously one after the other, the loose tokens after them, and
/// where each token of the contiguous layout comes from in the strided one.
fn contiguous_twin(layout: &Layout) -> (Layout, Vec<usize>) {
    let mut order = Vec::new();
    let mut grids = Vec::new();
    for grid in layout.grids() {
        grids.push(Grid::new(order.len(), grid.height, grid.width));
        // Written from SPEC section 3: token (r, c) at offset + r * stride + c.
        for r in 0..grid.height {
            for c in 0..grid.width {
                order.push(grid.offset + r * grid.stride + c);
            }
        }
    }
    let mut in_grid = vec![false; layout.tokens()];
    order.iter().for_each(|&t| in_grid[t] = true);
    order.extend((0..layout.tokens()).filter(|&t| !in_grid[t]));
    (Layout::new(layout.tokens(), grids).unwrap(), order)
}

/// `features` with each image's tokens taken in `order`.
fn permuted(features: &Features, order: &[usize]) -> Features {
    let (b, n, d) = (features.batch(), features.tokens(), features.width());
    let mut values = Vec::with_capacity(b * n * d);
    for image in 0..b {
        let x = features.image(image);
        for &token in order {
            values.extend_from_slice(&x[token * d..][..d]);
        }
    }
    Features::new(b, n, d, values).unwrap()
}

fn checked(keep: f64, scope: Scope) -> Options {
    Options {
        keep: Keep::new(keep).unwrap(),
        scope,
        save_projection: true,
        poison: true,
        ..Options::default()
    }
}

#[test]
fn strided_layouts_are_checked_token_by_token() {
    let (seed, mut rng) = seeded("strided_layouts_are_checked_token_by_token");
    for _ in 0..20 {
        let layout = strided_layout(&mut rng);
        let owners: Vec<usize> = (0..layout.tokens())
            .map(|t| layout.grids().iter().filter(|g| g.contains(t)).count())
            .collect();
        assert!(owners.iter().all(|&o| o <= 1), "seed {seed}: {layout:?}");
        assert!(owners.contains(&0), "seed {seed}: loose tokens expected");
    }
    // Interleaved rows are fine; a shared token, a stride below the width or a row past n
    // are not.
    let a = Grid::strided(0, 3, 2, 5);
    assert!(Layout::new(15, vec![a, Grid::strided(2, 3, 3, 5)]).is_ok());
    assert!(Layout::new(15, vec![a, Grid::strided(1, 3, 2, 5)]).is_err());
    assert!(Layout::new(15, vec![Grid::strided(0, 3, 4, 3)]).is_err());
    assert!(Layout::new(15, vec![Grid::strided(0, 3, 4, 0)]).is_err());
    assert!(Layout::new(13, vec![Grid::strided(0, 3, 4, 5)]).is_err());
    assert!(Layout::new(14, vec![Grid::strided(0, 3, 4, 5)]).is_ok());
}

#[test]
fn the_cpu_path_and_the_reference_agree_on_strided_layouts() {
    let (seed, mut rng) = seeded("the_cpu_path_and_the_reference_agree_on_strided_layouts");
    for scope in [Scope::Image, Scope::Grid] {
        let layout = strided_layout(&mut rng);
        let d = odd(&mut rng, 9..40);
        let channels = odd(&mut rng, 3..16);
        let weights = weights(&mut rng, d, channels, Some((5, 6)));
        let features = features(&mut rng, 2, layout.tokens(), d);
        let compressor =
            Compressor::new(weights.clone(), Backend::Cpu, None, Precision::F32).unwrap();
        for association in [Association::Keys, Association::Tokens] {
            let options = Options {
                association,
                ..checked(rng.random_range(0.1..0.7), scope)
            };
            let out = compressor.compress(&features, &layout, &options).unwrap();
            let what = format!("seed {seed}: cpu {scope:?} {association:?} {layout:?}");
            assert_reference(&out, &features, &weights, &layout, &options, 1e-4, &what);
        }
    }
}

#[test]
fn the_gpu_agrees_with_the_reference_on_strided_layouts() {
    let Some(context) = gpu() else { return };
    let (seed, mut rng) = seeded("the_gpu_agrees_with_the_reference_on_strided_layouts");
    let precisions: &[(Precision, f64)] = if context.has_f16() {
        &[(Precision::F32, 1e-4), (Precision::F16, 1e-2)]
    } else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI's lavapipe offers SHADER_F16"
        );
        &[(Precision::F32, 1e-4)]
    };
    for &(precision, tolerance) in precisions {
        for scope in [Scope::Image, Scope::Grid] {
            let layout = strided_layout(&mut rng);
            let d = odd(&mut rng, 9..40);
            let channels = odd(&mut rng, 3..16);
            let weights = weights(&mut rng, d, channels, Some((4, 7)));
            let features = features(&mut rng, 2, layout.tokens(), d);
            let compressor =
                Compressor::on_context(weights.clone(), context.clone(), precision).unwrap();
            let keep = rng.random_range(0.1..0.7);
            for kernels in KernelVariant::ALL {
                for association in [Association::Keys, Association::Tokens] {
                    let options = Options {
                        kernels,
                        association,
                        ..checked(keep, scope)
                    };
                    let out = compressor.compress(&features, &layout, &options).unwrap();
                    let what = format!(
                        "seed {seed}: gpu {precision:?} {scope:?} {kernels:?} {association:?} \
                         {layout:?}"
                    );
                    assert_reference(
                        &out, &features, &weights, &layout, &options, tolerance, &what,
                    );
                }
            }
        }
    }
}

#[test]
fn an_image_cut_into_token_ranges_honours_strided_grids() {
    let Some(context) = gpu() else { return };
    let (seed, mut rng) = seeded("an_image_cut_into_token_ranges_honours_strided_grids");
    let align = context.limits.min_storage_buffer_offset_alignment as usize;
    // Two interleaved grids and a newline-strided one, large enough to cut: n = 655.
    let a = Grid::strided(1, 15, 13, 29);
    let b = Grid::strided(15, 15, 11, 29);
    let c = Grid::strided(a.end().max(b.end()) + 2, 9, 17, 18);
    let layout = Layout::new(c.end() + 1, vec![a, b, c]).unwrap();
    let n = layout.tokens();
    let d = odd(&mut rng, 321..401);
    let weights = weights(&mut rng, d, 7, Some((3, 4)));
    let features = features(&mut rng, 2, n, d);
    let compressor = Compressor::on_context(weights.clone(), context, Precision::F32).unwrap();
    for (keep, scope) in [(0.5, Scope::Image), (0.3, Scope::Grid)] {
        let options = Options {
            profile: true,
            ..checked(keep, scope)
        };
        let m = layout.queries(options.keep).count;
        let limit = (m * d * 4).max(align * n * 4) * 21 / 20;
        assert!(
            limit < n * d * 4,
            "seed {seed}: the features must pass the limit"
        );
        let split = Options {
            max_binding_bytes: Some(limit as u64),
            ..options
        };
        let cut = compressor.compress(&features, &layout, &split).unwrap();
        let whole = compressor.compress(&features, &layout, &options).unwrap();
        let reductions = |c: &Compressed| {
            let steps = &c.profile.as_ref().unwrap().steps;
            steps.iter().filter(|s| s.name == "reduction").count()
        };
        assert!(
            reductions(&cut) > reductions(&whole),
            "seed {seed}: not split"
        );
        let what = format!("seed {seed}: split keep {keep} {scope:?}");
        assert_reference(&cut, &features, &weights, &layout, &split, 1e-4, &what);
    }
}

#[test]
fn every_baseline_method_follows_strided_grids() {
    let (seed, mut rng) = seeded("every_baseline_method_follows_strided_grids");
    let runners = runners();
    for case in 0..3 {
        let layout = strided_layout(&mut rng);
        let n = layout.tokens();
        let d = odd(&mut rng, 9..40);
        let x = features(&mut rng, 1, n, d);
        let attention: Vec<f32> = (0..n)
            .map(|_| rng.random_range(0.0..1.0f32).powi(3))
            .collect();
        let keep = Keep::new(rng.random_range(0.1..0.6)).unwrap();
        let queries = layout.queries(keep);
        let options = Options {
            keep,
            poison: true,
            ..Options::default()
        };
        let request = Request {
            features: (&x).into(),
            layout: &layout,
            attention: Some(&attention),
            seed: 7,
        };
        let (xi, ai) = (x.image(0), attention.as_slice());
        for method in Method::ALL.into_iter().filter(|m| !m.needs_weights()) {
            let Some(expected) =
                reference_methods::projection(method, options.scope, xi, d, ai, &queries, n)
            else {
                // random: every row one-hot on a token of its own grid, or of the image at
                // scope image.
                let out = runners[0].1.run(method, &request, &options).unwrap();
                let p = out.projection.unwrap();
                for (row, values) in p.chunks_exact(n).enumerate() {
                    let keys = queries.keys(row, method.scope(options.scope), n);
                    for (j, v) in values.iter().enumerate() {
                        assert!(*v == 0.0 || keys.contains(j), "seed {seed}: {method:?}");
                    }
                }
                continue;
            };
            let expected_tokens = reference::reduce(&expected, xi, n, d);
            for (name, runner) in &runners {
                let what = format!(
                    "seed {seed}, case {case}, {} on {name} {layout:?}",
                    method.name()
                );
                let out = runner.run(method, &request, &options).unwrap();
                common::methods::assert_matches(
                    out.projection.as_ref().unwrap(),
                    &out.tokens,
                    &expected,
                    &expected_tokens,
                    &what,
                );
            }
        }
    }
}

#[test]
fn a_strided_layout_gives_the_tokens_of_its_permuted_contiguous_twin() {
    let (seed, mut rng) = seeded("a_strided_layout_gives_the_tokens_of_its_contiguous_twin");
    let context = gpu();
    for scope in [Scope::Image, Scope::Grid] {
        let layout = strided_layout(&mut rng);
        let (twin, order) = contiguous_twin(&layout);
        let d = odd(&mut rng, 9..30);
        let channels = odd(&mut rng, 3..12);
        let weights = weights(&mut rng, d, channels, Some((5, 4)));
        let strided_features = features(&mut rng, 2, layout.tokens(), d);
        let twin_features = permuted(&strided_features, &order);
        let keep = Keep::new(rng.random_range(0.1..0.7)).unwrap();
        let what = format!("seed {seed}: {scope:?} {layout:?}");
        // The float64 reference: the same numbers up to the order of its sums.
        let (queries, twin_queries) = (layout.queries(keep), twin.queries(keep));
        assert_eq!(queries.count, twin_queries.count);
        let strided = reference::forward(&strided_features, &weights, &layout, &queries, scope);
        let contiguous = reference::forward(&twin_features, &weights, &twin, &twin_queries, scope);
        let worst = strided
            .tokens
            .iter()
            .zip(&contiguous.tokens)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(worst < 1e-12, "{what}: reference tokens differ by {worst}");
        let (n, m) = (layout.tokens(), queries.count);
        for row in 0..2 * m {
            for (i, &token) in order.iter().enumerate() {
                let (a, b) = (
                    strided.projection[row * n + token],
                    contiguous.projection[row * n + i],
                );
                assert!(
                    (a - b).abs() < 1e-12,
                    "{what}: P[{row}] column {token} vs {i}"
                );
            }
        }
        // The CPU path and the GPU: tokens within f32 rounding of each other.
        let mut backends =
            vec![Compressor::new(weights.clone(), Backend::Cpu, None, Precision::F32).unwrap()];
        if let Some(context) = &context {
            backends.push(
                Compressor::on_context(weights.clone(), context.clone(), Precision::F32).unwrap(),
            );
        }
        let options = Options {
            keep,
            ..checked(keep.value(), scope)
        };
        for compressor in backends {
            let a = compressor
                .compress(&strided_features, &layout, &options)
                .unwrap();
            let b = compressor
                .compress(&twin_features, &twin, &options)
                .unwrap();
            let twin_tokens: Vec<f64> = b.tokens.iter().map(|&v| v as f64).collect();
            let error = relative_error(&a.tokens, &twin_tokens);
            assert!(
                error < 1e-5,
                "{what} on {}: tokens differ by {error}",
                compressor.device()
            );
        }
    }
}

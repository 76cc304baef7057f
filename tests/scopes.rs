//! Issue 29 (SPEC section 4, v4): every method at its authors' scope. With the same `m` and
//! query grids as every other method, `divprune` and `random` at scope `image` choose their
//! `m` rows among all `n` tokens of the image, loose ones included (DivPrune's authors prune
//! the packed sequence the language model reads), and grid by grid at scope `grid`; `pool`,
//! `sample`, `tome`, `visionzip` and `prumerge` run per grid whatever the scope; the output
//! metadata names the scope each method used. Checked against float64 re-statements
//! (`common::methods`) on fresh random inputs, on every backend, outputs poisoned first.

mod common;

use common::methods as reference_methods;
use common::{binary, features, folder, grid, runners, seeded};
use metacompress::files;
use metacompress::methods::{projection, Method, Request};
use metacompress::{Dtype, Features, Keep, Layout, Options, Scope};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use safetensors::SafeTensors;

/// Three grids (odd sizes, one a single row) with loose tokens before, between and after
/// them, as LLaVA-NeXT's newlines are; and which tokens are loose.
fn loose_layout(rng: &mut ChaCha8Rng) -> (Layout, Vec<usize>) {
    let first = grid(
        rng.random_range(1..3),
        rng.random_range(3..7),
        rng.random_range(4..8),
    );
    let second = grid(
        first.end() + rng.random_range(1..4),
        1,
        rng.random_range(4..9),
    );
    let third = grid(
        second.end() + rng.random_range(1..3),
        rng.random_range(3..6),
        rng.random_range(3..7),
    );
    let n = third.end() + rng.random_range(1..4);
    let layout = Layout::new(n, vec![first, second, third]).unwrap();
    let loose = (0..n).filter(|&t| layout.grid_of(t).is_none()).collect();
    (layout, loose)
}

/// The options (outputs poisoned first) and request of a run of `x` without attention.
fn poisoned_run<'a>(
    keep: Keep,
    scope: Scope,
    x: &'a Features,
    layout: &'a Layout,
    seed: u64,
) -> (Options, Request<'a>) {
    let options = Options {
        keep,
        scope,
        poison: true,
        ..Options::default()
    };
    let request = Request {
        features: x.into(),
        layout,
        attention: None,
        seed,
    };
    (options, request)
}

/// The token each one-hot row of `p` (`m x n`) keeps; panics on a row that is not one-hot.
fn kept_tokens(p: &[f32], n: usize, what: &str) -> Vec<usize> {
    p.chunks_exact(n)
        .enumerate()
        .map(|(row, values)| {
            let hot: Vec<usize> = (0..n).filter(|&t| values[t] != 0.0).collect();
            assert_eq!(hot.len(), 1, "{what}: row {row} is not one-hot: {hot:?}");
            assert_eq!(values[hot[0]], 1.0, "{what}: row {row}'s weight");
            hot[0]
        })
        .collect()
}

/// Rows in token order, never a token twice.
fn assert_distinct_in_order(kept: &[usize], what: &str) {
    assert!(
        kept.windows(2).all(|pair| pair[0] < pair[1]),
        "{what}: kept {kept:?} not distinct and in token order"
    );
}

#[test]
fn divprune_at_scope_image_chooses_among_all_tokens_loose_ones_included() {
    let (seed, mut rng) = seeded("divprune_at_scope_image_chooses_among_all_tokens");
    let runners = runners();
    for case in 0..4 {
        let (layout, loose) = loose_layout(&mut rng);
        let n = layout.tokens();
        let d = 2 * rng.random_range(6..20) + 1;
        let b = 2;
        let mut x = features(&mut rng, b, n, d);
        if case % 2 == 1 {
            // Grid tokens close to one direction, loose tokens anywhere: at scope image the
            // loose tokens are the most diverse, so DivPrune keeps them (and one token of the
            // grids' cluster); per grid it cannot.
            let direction = common::normal(&mut rng, d, 1.0);
            let values: Vec<f32> = (0..b * n)
                .flat_map(|index| {
                    let token = index % n;
                    let noise = common::normal(&mut rng, d, 0.05);
                    let random = common::normal(&mut rng, d, 1.0);
                    if layout.grid_of(token).is_some() {
                        direction.iter().zip(noise).map(|(a, e)| a + e).collect()
                    } else {
                        random
                    }
                })
                .collect();
            x = Features::new(b, n, d, values).unwrap();
        }
        let keep = Keep::new(rng.random_range(0.15..0.6)).unwrap();
        let queries = layout.queries(keep);
        let m = queries.count;
        for scope in [Scope::Image, Scope::Grid] {
            let (options, request) = poisoned_run(keep, scope, &x, &layout, 5);
            let mut expected_p = Vec::new();
            let mut expected_tokens = Vec::new();
            for image in 0..b {
                let xi = x.image(image);
                let p =
                    reference_methods::projection(Method::DivPrune, scope, xi, d, &[], &queries, n)
                        .unwrap();
                expected_tokens.extend(metacompress::reference::reduce(&p, xi, n, d));
                expected_p.extend(p);
            }
            for (name, runner) in &runners {
                let what = format!("seed {seed}, case {case}, {scope:?} on {name}, {layout:?}");
                let result = runner.run(Method::DivPrune, &request, &options).unwrap();
                assert_eq!(result.queries.count, m, "{what}: m");
                let p = result.projection.as_ref().unwrap();
                reference_methods::assert_matches(
                    p,
                    &result.tokens,
                    &expected_p,
                    &expected_tokens,
                    &what,
                );
                for image in 0..b {
                    let kept = kept_tokens(&p[image * m * n..][..m * n], n, &what);
                    assert_distinct_in_order(&kept, &what);
                    let loose_kept = kept.iter().filter(|t| loose.contains(t)).count();
                    match scope {
                        Scope::Grid => assert_eq!(loose_kept, 0, "{what}: a loose token kept"),
                        // One representative of the grids' cluster at most; else loose.
                        Scope::Image if case % 2 == 1 => assert!(
                            loose_kept >= loose.len().min(m - 1),
                            "{what}: too few of the diverse loose tokens {loose:?} in {kept:?}"
                        ),
                        Scope::Image => {}
                    }
                }
            }
        }
    }
}

#[test]
fn divprune_at_scope_image_never_keeps_a_token_twice_on_duplicates() {
    let (seed, mut rng) = seeded("divprune_at_scope_image_never_keeps_a_token_twice");
    // Every token the same, grids and loose ones alike: every score ties at 0.
    let (layout, _) = loose_layout(&mut rng);
    let (n, d) = (layout.tokens(), 9);
    let one = common::normal(&mut rng, d, 1.0);
    let x: Vec<f32> = (0..n).flat_map(|_| one.iter().copied()).collect();
    let queries = layout.queries(Keep::new(0.5).unwrap());
    let mut draws = <ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
    let p = projection(
        Method::DivPrune,
        Scope::Image,
        &x,
        d,
        None,
        &queries,
        &mut draws,
    )
    .unwrap();
    let kept = kept_tokens(&p, n, &format!("seed {seed}"));
    // The first of equals each time: the lowest tokens, loose or not.
    assert_eq!(kept, (0..queries.count).collect::<Vec<_>>(), "seed {seed}");
}

#[test]
fn random_at_scope_image_draws_m_distinct_tokens_of_the_whole_image() {
    let (seed, mut rng) = seeded("random_at_scope_image_draws_m_distinct_tokens");
    let runners = runners();
    let (layout, loose) = loose_layout(&mut rng);
    let (n, d, b) = (layout.tokens(), 11, 3);
    let x = features(&mut rng, b, n, d);
    let keep = Keep::new(rng.random_range(0.15..0.6)).unwrap();
    let queries = layout.queries(keep);
    let m = queries.count;
    let draw_seed = rng.random_range(0..1000u64);
    // The definition: image after image, `m` of `0..n` drawn by rand's `index::sample` from
    // ChaCha8 seeded with the request's seed, in token order.
    let mut draws = <ChaCha8Rng as rand::SeedableRng>::seed_from_u64(draw_seed);
    let mut expected_p = vec![0.0f64; b * m * n];
    for image in 0..b {
        let mut chosen = rand::seq::index::sample(&mut draws, n, m).into_vec();
        chosen.sort();
        for (row, token) in chosen.into_iter().enumerate() {
            expected_p[(image * m + row) * n + token] = 1.0;
        }
    }
    let expected_tokens: Vec<f64> = (0..b)
        .flat_map(|image| {
            metacompress::reference::reduce(
                &expected_p[image * m * n..][..m * n],
                x.image(image),
                n,
                d,
            )
        })
        .collect();
    let (options, request) = poisoned_run(keep, Scope::Image, &x, &layout, draw_seed);
    for (name, runner) in &runners {
        let what = format!("seed {seed}, draws {draw_seed} on {name}, {layout:?}");
        let result = runner.run(Method::Random, &request, &options).unwrap();
        let p = result.projection.as_ref().unwrap();
        reference_methods::assert_matches(p, &result.tokens, &expected_p, &expected_tokens, &what);
        for image in 0..b {
            assert_distinct_in_order(&kept_tokens(&p[image * m * n..][..m * n], n, &what), &what);
        }
    }

    // Uniform over all n tokens, loose ones as likely as any: over many draws each token is
    // kept about `draws * m / n` times (5 standard deviations of the binomial count).
    let trials = 2000;
    let mut counts = vec![0usize; n];
    let mut loose_seen = 0;
    for trial in 0..trials {
        let mut draws = <ChaCha8Rng as rand::SeedableRng>::seed_from_u64(trial);
        let p = projection(
            Method::Random,
            Scope::Image,
            x.image(0),
            d,
            None,
            &queries,
            &mut draws,
        )
        .unwrap();
        let kept = kept_tokens(&p, n, &format!("seed {seed}, trial {trial}"));
        assert_distinct_in_order(&kept, &format!("seed {seed}, trial {trial}"));
        loose_seen += kept.iter().filter(|t| loose.contains(t)).count();
        for token in kept {
            counts[token] += 1;
        }
    }
    let share = m as f64 / n as f64;
    let mean = trials as f64 * share;
    let spread = 5.0 * (trials as f64 * share * (1.0 - share)).sqrt();
    for (token, &count) in counts.iter().enumerate() {
        assert!(
            (count as f64 - mean).abs() <= spread,
            "seed {seed}: token {token} kept {count} times in {trials} draws; expected \
             {mean:.0} +- {spread:.0} ({layout:?})"
        );
    }
    assert!(loose_seen > 0, "seed {seed}: no loose token ever drawn");
}

#[test]
fn the_other_baselines_run_per_grid_whatever_the_scope() {
    let (seed, mut rng) = seeded("the_other_baselines_run_per_grid_whatever_the_scope");
    let (layout, _) = loose_layout(&mut rng);
    let (n, d) = (layout.tokens(), 13);
    let x = features(&mut rng, 1, n, d);
    let attention: Vec<f32> = (0..n)
        .map(|_| rng.random_range(0.0..1.0f32).powi(3))
        .collect();
    let queries = layout.queries(Keep::new(rng.random_range(0.1..0.6)).unwrap());
    for method in [
        Method::Pool,
        Method::Sample,
        Method::Tome,
        Method::VisionZip,
        Method::PruMerge,
    ] {
        assert_eq!(method.scope(Scope::Image), Scope::Grid);
        assert_eq!(method.authors_scope(), Scope::Grid);
        let at = |scope| {
            let mut draws = <ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
            projection(
                method,
                scope,
                x.image(0),
                d,
                Some(&attention),
                &queries,
                &mut draws,
            )
            .unwrap()
        };
        assert_eq!(
            at(Scope::Image),
            at(Scope::Grid),
            "seed {seed}: {} depends on the scope",
            method.name()
        );
    }
    for method in [Method::MetaCompress, Method::DivPrune, Method::Random] {
        assert_eq!(method.authors_scope(), Scope::Image, "{}", method.name());
        for scope in [Scope::Image, Scope::Grid] {
            assert_eq!(method.scope(scope), scope, "{}", method.name());
        }
    }
}

#[test]
fn the_output_metadata_names_the_scope_each_method_used() {
    let dir = folder("scopes");
    let (seed, mut rng) = seeded("the_output_metadata_names_the_scope");
    let (layout, _) = loose_layout(&mut rng);
    let (n, d) = (layout.tokens(), 7);
    let x = features(&mut rng, 1, n, d);
    let input = dir.join("input.safetensors");
    files::write_input(&input, &x, false, Dtype::F32, Some(&layout.to_json()), None).unwrap();
    for (method, asked, used) in [
        ("divprune", "image", "image"),
        ("divprune", "grid", "grid"),
        ("random", "image", "image"),
        ("random", "grid", "grid"),
        ("tome", "image", "grid"),
        ("pool", "image", "grid"),
    ] {
        let output = dir.join(format!("{method}-{asked}.safetensors"));
        let out = binary()
            .args(["compress", "--input"])
            .arg(&input)
            .arg("--output")
            .arg(&output)
            .args(["--method", method, "--scope", asked, "--keep", "0.3"])
            .args(["--backend", "cpu"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "seed {seed}, {method}: {stderr}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains(&format!("scope {used}")),
            "{method}: {stdout}"
        );
        let bytes = std::fs::read(&output).unwrap();
        let (_, metadata) = SafeTensors::read_metadata(&bytes).unwrap();
        let metadata = metadata.metadata().clone().unwrap();
        assert_eq!(
            metadata["scope"], used,
            "seed {seed}: {method} asked for {asked}"
        );
    }
}

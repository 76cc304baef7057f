//! Issue 5: every method as a `P`, against the float64 references of `common::methods`, on
//! fresh random inputs at odd sizes, on the CPU path, the reference and the GPU (outputs
//! poisoned); the properties of each `P`; the fidelity measures; the pictures. Issue 22: each
//! baseline as its authors' code computes it, and a test for each way it differs from what
//! we had (ToMe's half per round, VisionZip's [CLS] and contextual weights, PruMerge's
//! neighbour sums) or from what its authors wrote (DivPrune on duplicates).

mod common;

use common::methods as reference_methods;
use common::{features, gpu, grid, relative_error, runners, seeded, weights};
use metacompress::compare::{fidelity, sizes};
use metacompress::methods::{check_attention, projection, Method, Request, Runner};
use metacompress::pictures::{write_pictures, UNUSED};
use metacompress::{
    reference, Backend, Features, Keep, Layout, Options, Precision, Queries, Scope, SplitK,
};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Three grids (odd sizes, one a single row) with loose tokens between and after them.
fn odd_layout(rng: &mut ChaCha8Rng) -> Layout {
    let (h0, w0) = (rng.random_range(4..8), rng.random_range(5..9));
    let w1 = rng.random_range(5..12);
    let (h2, w2) = (rng.random_range(5..9), rng.random_range(3..7));
    let first = grid(0, h0, w0);
    let second = grid(first.end() + 2, 1, w1);
    let third = grid(second.end() + 1, h2, w2);
    Layout::new(third.end() + 3, vec![first, second, third]).unwrap()
}

/// Attention with a heavy tail (so the interquartile fence has outliers) and a few exact ties.
fn attention(rng: &mut ChaCha8Rng, count: usize) -> Vec<f32> {
    (0..count)
        .map(|i| {
            if i % 11 == 3 {
                0.25
            } else {
                let u: f32 = rng.random_range(0.0..1.0);
                (-u.ln()).powi(3)
            }
        })
        .collect()
}

#[test]
fn every_baseline_matches_its_float64_reference_on_every_backend() {
    let (seed, mut rng) = seeded("every_baseline_matches_its_float64_reference");
    let runners = runners();
    // Three small odd layouts, one LLaVA-1.5 grid (24x24 at keep 0.1: 64 rows), then a 23x23
    // grid (529 tokens: odd counts for ToMe) and a 7x5 grid of stride 6, with loose tokens.
    for case in 0..5 {
        let layout = match case {
            0..3 => odd_layout(&mut rng),
            3 => Layout::square(576).unwrap(),
            _ => Layout::new(
                575,
                vec![grid(0, 23, 23), metacompress::Grid::strided(531, 7, 5, 6)],
            )
            .unwrap(),
        };
        let n = layout.tokens();
        let d = 2 * rng.random_range(8..24) + 1;
        let b = 2;
        let x = features(&mut rng, b, n, d);
        let attention = attention(&mut rng, b * n);
        let keep = Keep::new(match case {
            0..3 => rng.random_range(0.1..0.6),
            3 => 0.1,
            _ => rng.random_range(0.05..0.3),
        })
        .unwrap();
        let queries = layout.queries(keep);
        let m = queries.count;
        // Both scopes (SPEC section 4, v4: DivPrune at scope image picks among all tokens).
        let scope = if case % 2 == 0 {
            Scope::Image
        } else {
            Scope::Grid
        };
        let options = Options {
            keep,
            scope,
            poison: true,
            ..Options::default()
        };
        let request = Request {
            features: (&x).into(),
            layout: &layout,
            attention: Some(&attention),
            seed: 7,
        };
        for method in Method::ALL.into_iter().filter(|m| !m.needs_weights()) {
            let what = format!("seed {seed}, case {case}, {} at {scope:?}", method.name());
            let mut expected_tokens = Vec::new();
            let mut expected_p = Vec::new();
            for (name, runner) in &runners {
                let result = runner.run(method, &request, &options).unwrap();
                assert_eq!(result.queries.count, m, "{what} on {name}: m");
                let p = result.projection.as_ref().unwrap();
                if expected_tokens.is_empty() {
                    for image in 0..b {
                        let xi = x.image(image);
                        let ai = &attention[image * n..][..n];
                        let p_image = &p[image * m * n..][..m * n];
                        let p_ref =
                            reference_methods::projection(method, scope, xi, d, ai, &queries, n)
                                .unwrap_or_else(|| p_image.iter().map(|&v| v as f64).collect());
                        let worst = p_image
                            .iter()
                            .zip(&p_ref)
                            .map(|(a, r)| (*a as f64 - r).abs())
                            .fold(0.0, f64::max);
                        assert!(
                            worst <= 1e-6,
                            "{what}: P differs from the reference by {worst}"
                        );
                        expected_tokens.extend(reference::reduce(&p_ref, xi, n, d));
                        expected_p.extend(p_ref);
                    }
                }
                reference_methods::assert_matches(
                    p,
                    &result.tokens,
                    &expected_p,
                    &expected_tokens,
                    &format!("{what} on {name}"),
                );
            }
        }
    }
}

/// `P` of one 24x24 image at keep 0.1 (64 rows) under `method`, with its attention.
fn llava_projection(rng: &mut ChaCha8Rng, method: Method, d: usize) -> (Vec<f32>, Vec<f32>) {
    let layout = Layout::square(576).unwrap();
    let x = features(rng, 1, 576, d);
    let a = attention(rng, 576);
    let queries = layout.queries(Keep::new(0.1).unwrap());
    assert_eq!(queries.count, 64);
    let mut draws = <ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
    // Per grid whatever the scope: at scope image as their authors run them.
    let p = projection(
        method,
        Scope::Image,
        x.image(0),
        d,
        Some(&a),
        &queries,
        &mut draws,
    )
    .unwrap();
    (p, a)
}

#[test]
fn visionzip_is_cls_53_dominant_tokens_and_10_contextual_targets_plus_means() {
    let (seed, mut rng) = seeded("visionzip_is_cls_53_dominant_and_10_contextual");
    let (p, a) = llava_projection(&mut rng, Method::VisionZip, 11);
    let rows: Vec<&[f32]> = p.chunks_exact(576).collect();
    // Row 0 stands for [CLS]: the attention-weighted mean of the grid.
    let total: f64 = a.iter().map(|&v| v as f64).sum();
    for (t, &w) in rows[0].iter().enumerate() {
        let expected = a[t] as f64 / total;
        assert!(
            (w as f64 - expected).abs() < 1e-6,
            "seed {seed}: [CLS] weight of {t}"
        );
    }
    // Rows 1..54: the 53 most attended tokens (not 54), one-hot, in token order.
    let mut ranked: Vec<usize> = (0..576).collect();
    ranked.sort_by(|&i, &j| a[j].total_cmp(&a[i]).then(i.cmp(&j)));
    let mut top: Vec<usize> = ranked[..53].to_vec();
    top.sort();
    let dominant: Vec<usize> = rows[1..54]
        .iter()
        .map(|row| {
            let hot: Vec<usize> = (0..576).filter(|&t| row[t] != 0.0).collect();
            assert_eq!(hot.len(), 1, "seed {seed}: a dominant row is one-hot");
            assert_eq!(row[hot[0]], 1.0);
            hot[0]
        })
        .collect();
    assert_eq!(dominant, top, "seed {seed}: the 53 most attended tokens");
    assert!(
        !dominant.contains(&ranked[53]),
        "seed {seed}: the 54th most attended is not dominant"
    );
    // Rows 54..64: contextual, the target weighing 1 and the merged tokens 1/count each, so a
    // row with anything merged sums to 2.
    let mut summing_to_two = 0;
    for row in &rows[54..] {
        let target: Vec<usize> = (0..576).filter(|&t| row[t] == 1.0).collect();
        assert_eq!(
            target.len(),
            1,
            "seed {seed}: one target per contextual row"
        );
        let merged: Vec<f32> = row
            .iter()
            .enumerate()
            .filter(|&(t, &w)| w != 0.0 && t != target[0])
            .map(|(_, &w)| w)
            .collect();
        for &w in &merged {
            assert_eq!(w, 1.0 / merged.len() as f32, "seed {seed}: merged weight");
        }
        let sum: f64 = row.iter().map(|&w| w as f64).sum();
        if !merged.is_empty() {
            assert!((sum - 2.0).abs() < 1e-5, "seed {seed}: a row sums to {sum}");
            summing_to_two += 1;
        }
    }
    assert!(summing_to_two > 0, "seed {seed}: no contextual merge");
    // Every token is in exactly one of: [CLS] (all of them), dominant, contextual.
    for t in 0..576 {
        let holders = rows[1..].iter().filter(|row| row[t] != 0.0).count();
        assert_eq!(
            holders, 1,
            "seed {seed}: token {t} in {holders} rows past [CLS]"
        );
    }
}

#[test]
fn prumerge_rows_are_a_kept_token_plus_its_neighbours_attention_and_reuse_tokens() {
    let (seed, mut rng) = seeded("prumerge_rows_are_a_kept_token_plus_neighbours");
    let (p, a) = llava_projection(&mut rng, Method::PruMerge, 13);
    let rows: Vec<&[f32]> = p.chunks_exact(576).collect();
    let layout = Layout::square(576).unwrap();
    let queries = layout.queries(Keep::new(0.1).unwrap());
    let kept = reference_methods::prumerge_kept(&queries.grids[0], &a);
    assert_eq!(kept.len(), 63, "seed {seed}");
    // The most attended token is the first row's (PruMerge's order: outliers first).
    let most = (0..576).max_by(|&i, &j| a[i].total_cmp(&a[j]).then(j.cmp(&i)));
    assert_eq!(kept[0], most.unwrap(), "seed {seed}: first kept");
    let mut uses = vec![0; 576];
    for (row, &token) in rows.iter().zip(&kept) {
        assert_eq!(row[token], 1.0, "seed {seed}: kept token {token} weighs 1");
        let neighbours: Vec<usize> = (0..576).filter(|&t| t != token && row[t] != 0.0).collect();
        assert_eq!(neighbours.len(), 32, "seed {seed}: k = 32 neighbours");
        for &t in &neighbours {
            assert_eq!(
                row[t], a[t],
                "seed {seed}: neighbour {t} weighs its attention"
            );
            uses[t] += 1;
        }
        let sum: f64 = row.iter().map(|&w| w as f64).sum();
        let expected = 1.0 + neighbours.iter().map(|&t| a[t] as f64).sum::<f64>();
        assert!((sum - expected).abs() < 1e-4 * expected, "seed {seed}");
        assert!((sum - 1.0).abs() > 1e-3, "seed {seed}: a row sums to 1");
    }
    assert!(
        uses.iter().any(|&u| u >= 2),
        "seed {seed}: no token serves two rows"
    );
    // The last row: every token not kept, weighed by its attention.
    for t in 0..576 {
        let expected = if kept.contains(&t) { 0.0 } else { a[t] };
        assert_eq!(
            rows[63][t], expected,
            "seed {seed}: extra token's weight of {t}"
        );
    }
    // Flat attention has no outliers: the 63 cells at stride 9 (576 / 63), from 0.
    let x = features(&mut rng, 1, 576, 13);
    let flat = vec![1.0 / 576.0; 576];
    let mut draws = <ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
    let p = projection(
        Method::PruMerge,
        Scope::Image,
        x.image(0),
        13,
        Some(&flat),
        &queries,
        &mut draws,
    )
    .unwrap();
    let kept: Vec<usize> = p
        .chunks_exact(576)
        .take(63)
        .map(|row| row.iter().position(|&w| w == 1.0).unwrap())
        .collect();
    assert_eq!(kept, (0..63).map(|i| 9 * i).collect::<Vec<_>>());
}

#[test]
fn every_baseline_matches_its_reference_on_tiny_grids_at_every_keep() {
    // 1x1, 1x2, 2x1, 2x2, 1x3, 3x3 and 2x5 grids with loose tokens between, from keep 0.05
    // to 1: a single row, every token kept, PruMerge with no token to spare but one.
    let (seed, mut rng) = seeded("every_baseline_matches_on_tiny_grids");
    let mut grids = Vec::new();
    let mut offset = 0;
    for (h, w) in [(1, 1), (1, 2), (2, 1), (2, 2), (1, 3), (3, 3), (2, 5)] {
        grids.push(grid(offset, h, w));
        offset += h * w + 1;
    }
    let layout = Layout::new(offset, grids).unwrap();
    let (n, d) = (layout.tokens(), 6);
    let x = features(&mut rng, 1, n, d);
    let a = attention(&mut rng, n);
    for (keep, scope) in [0.05, 0.3, 0.5, 0.8, 1.0]
        .into_iter()
        .flat_map(|keep| [(keep, Scope::Image), (keep, Scope::Grid)])
    {
        let queries = layout.queries(Keep::new(keep).unwrap());
        for method in Method::ALL.into_iter().filter(|m| !m.needs_weights()) {
            let mut draws = <ChaCha8Rng as rand::SeedableRng>::seed_from_u64(1);
            let p =
                projection(method, scope, x.image(0), d, Some(&a), &queries, &mut draws).unwrap();
            let Some(expected) =
                reference_methods::projection(method, scope, x.image(0), d, &a, &queries, n)
            else {
                continue;
            };
            let worst = p
                .iter()
                .zip(&expected)
                .map(|(v, e)| (*v as f64 - e).abs())
                .fold(0.0, f64::max);
            assert!(
                worst <= 1e-6,
                "seed {seed}, keep {keep}, {}: P differs by {worst}",
                method.name()
            );
        }
    }
}

#[test]
fn rows_that_do_not_sum_to_one_or_weigh_nothing_keep_the_measures_finite() {
    // Zero attention: PruMerge finds no outliers, its neighbours and its extra token weigh 0
    // (a zero row, size 0), VisionZip's [CLS] row is uniform; every measure stays finite.
    let (seed, mut rng) = seeded("rows_that_do_not_sum_to_one_keep_the_measures_finite");
    let layout = odd_layout(&mut rng);
    let (n, d) = (layout.tokens(), 9);
    let x = features(&mut rng, 1, n, d);
    let zero = vec![0.0f32; n];
    let runner = Runner::new(None, Backend::Cpu, None, Precision::F32).unwrap();
    let request = Request {
        features: (&x).into(),
        layout: &layout,
        attention: Some(&zero),
        seed: 0,
    };
    let options = Options {
        keep: Keep::new(0.3).unwrap(),
        ..Options::default()
    };
    let probes = common::normal(&mut rng, 5 * d, 1.0);
    for method in [Method::PruMerge, Method::VisionZip] {
        let result = runner.run(method, &request, &options).unwrap();
        let p = result.projection.as_ref().unwrap();
        let zero_rows = p.chunks_exact(n).filter(|r| r.iter().all(|&w| w == 0.0));
        if method == Method::PruMerge {
            assert_eq!(zero_rows.count(), result.queries.grids.len(), "seed {seed}");
        }
        let f = fidelity(x.image(0), &result.tokens, p, &probes, d);
        for value in [
            f.attention_error,
            f.proportional_error,
            f.coverage,
            f.energy,
        ] {
            assert!(value.is_finite(), "seed {seed}, {}: {f:?}", method.name());
        }
    }
}

#[test]
fn tome_merges_at_most_half_of_an_odd_count_per_round_in_its_own_order() {
    // A 1x5 grid to 2 tokens. ToMe: round 1 merges floor(5/2) = 2 (tokens 2 and 4 into 3;
    // token 0 matches nothing), leaving [0, 1, {2,3,4}] in ToMe's order; round 2 over 3
    // tokens merges 1: {2,3,4} into 1. Merging ceil(5/2) = 3 in round 1 would have merged 0
    // into 1 instead.
    let x: [f32; 15] = [
        0.0, 0.0, 1.0, // 0
        1.0, 0.5, 0.0, // 1
        0.0, 1.0, 0.05, // 2
        0.0, 1.0, 0.0, // 3
        0.05, 1.0, 0.0, // 4
    ];
    let layout = Layout::new(5, vec![grid(0, 1, 5)]).unwrap();
    let queries = layout.queries(Keep::new(0.4).unwrap());
    assert_eq!(queries.count, 2);
    let mut draws = <ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
    let p = projection(Method::Tome, Scope::Grid, &x, 3, None, &queries, &mut draws).unwrap();
    assert_eq!(
        p,
        vec![1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.25, 0.25, 0.25, 0.25]
    );
    let expected = reference_methods::tome(&x, 3, &queries, 5);
    assert_eq!(
        expected,
        vec![1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.25, 0.25, 0.25, 0.25]
    );
}

#[test]
fn divprune_never_keeps_a_token_twice_where_its_authors_loop_would() {
    let (seed, mut rng) = seeded("divprune_never_keeps_a_token_twice");
    // A 3x3 grid of one token repeated, to 2x2.
    let d = 7;
    let one = common::normal(&mut rng, d, 1.0);
    let x: Vec<f32> = (0..9).flat_map(|_| one.iter().copied()).collect();
    let layout = Layout::square(9).unwrap();
    let queries = layout.queries(Keep::new(0.5).unwrap());
    assert_eq!(queries.count, 4);
    let authors = reference_methods::divprune_as_written(&x, d, &(0..9).collect::<Vec<_>>(), 4);
    assert_eq!(authors, vec![0, 0, 0, 0], "seed {seed}: the authors' loop");
    // One grid: both scopes choose among the same nine tokens.
    for scope in [Scope::Image, Scope::Grid] {
        let mut draws = <ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
        let p = projection(Method::DivPrune, scope, &x, d, None, &queries, &mut draws).unwrap();
        let kept: Vec<usize> = p
            .chunks_exact(9)
            .map(|row| row.iter().position(|&w| w == 1.0).unwrap())
            .collect();
        assert_eq!(kept, vec![0, 1, 2, 3], "seed {seed}: ours at {scope:?}");
        let reference = reference_methods::divprune(&x, d, &queries, 9);
        assert_eq!(p.iter().map(|&v| v as f64).collect::<Vec<_>>(), reference);
    }
}

#[test]
fn metacompress_runs_through_the_runner_as_the_forward_pass() {
    let (seed, mut rng) = seeded("metacompress_runs_through_the_runner");
    let layout = odd_layout(&mut rng);
    let (n, d) = (layout.tokens(), 23);
    let x = features(&mut rng, 1, n, d);
    let w = weights(&mut rng, d, 7, Some((3, 4)));
    let options = Options {
        keep: Keep::new(0.3).unwrap(),
        poison: true,
        save_projection: true,
        ..Options::default()
    };
    let queries = layout.queries(options.keep);
    let expected = reference::forward(&x, &w, &layout, &queries, options.scope);
    let mut backends =
        vec![Runner::new(Some(w.clone()), Backend::Cpu, None, Precision::F32).unwrap()];
    if let Some(context) = gpu() {
        backends.push(Runner::on_context(Some(w.clone()), context, Precision::F32).unwrap());
    }
    for runner in backends {
        let request = Request {
            features: (&x).into(),
            layout: &layout,
            attention: None,
            seed: 0,
        };
        let result = runner
            .run(Method::MetaCompress, &request, &options)
            .unwrap();
        let error = relative_error(&result.tokens, &expected.tokens);
        assert!(
            error <= 1e-4,
            "seed {seed}, {}: tokens {error}",
            runner.device()
        );
        let error = relative_error(result.projection.as_ref().unwrap(), &expected.projection);
        assert!(error <= 1e-4, "seed {seed}, {}: P {error}", runner.device());
    }
}

/// `P` of one random image under `method` asked for `scope`, with its queries.
fn one_projection(
    rng: &mut ChaCha8Rng,
    method: Method,
    scope: Scope,
    seed: u64,
) -> (Layout, Features, Queries, Vec<f32>) {
    let layout = odd_layout(rng);
    let (n, d) = (layout.tokens(), 17);
    let x = features(rng, 1, n, d);
    let a = attention(rng, n);
    let queries = layout.queries(Keep::new(0.3).unwrap());
    let mut draws = <ChaCha8Rng as rand::SeedableRng>::seed_from_u64(seed);
    let p = projection(method, scope, x.image(0), d, Some(&a), &queries, &mut draws).unwrap();
    (layout, x, queries, p)
}

#[test]
fn every_projection_is_non_negative_inside_the_querys_grid() {
    let (seed, mut rng) = seeded("every_projection_is_non_negative_inside_the_querys_grid");
    let methods = Method::ALL.into_iter().filter(|m| !m.needs_weights());
    for (method, scope) in methods.flat_map(|m| [(m, Scope::Grid), (m, Scope::Image)]) {
        let (layout, _, queries, p) = one_projection(&mut rng, method, scope, 3);
        let n = layout.tokens();
        let mut columns_used = Vec::new();
        for q in &queries.grids {
            for row in q.query_offset..q.query_offset + q.len() {
                let weights = &p[row * n..][..n];
                let what = format!("seed {seed}, {} at {scope:?} row {row}", method.name());
                // Rows sum to 1 but where the authors' do not (visionzip's contextual rows,
                // prumerge's rows: their own tests).
                let sum: f64 = weights.iter().map(|&w| w as f64).sum();
                if !method.needs_attention() {
                    assert!((sum - 1.0).abs() < 1e-5, "{what}: sums to {sum}");
                }
                assert!(
                    weights.iter().all(|&w| w >= 0.0),
                    "{what}: a negative weight"
                );
                // Inside the query's grid, but where the method chose among the whole image.
                let inside = q.grid.offset..q.grid.end();
                for (token, &w) in weights.iter().enumerate() {
                    assert!(
                        w == 0.0 || inside.contains(&token) || method.scope(scope) == Scope::Image,
                        "{what}: weighs token {token} outside its grid"
                    );
                }
                if method.prunes() {
                    let hot: Vec<usize> = (0..n).filter(|&t| weights[t] != 0.0).collect();
                    assert_eq!(hot.len(), 1, "{what}: not one-hot");
                    assert_eq!(weights[hot[0]], 1.0, "{what}: one-hot weight");
                    columns_used.push(hot[0]);
                }
            }
        }
        let before = columns_used.len();
        columns_used.sort();
        columns_used.dedup();
        assert_eq!(
            columns_used.len(),
            before,
            "seed {seed}, {}: a token kept twice",
            method.name()
        );
    }
}

#[test]
fn sample_keeps_the_centre_cell_of_each_window() {
    let (seed, mut rng) = seeded("sample_keeps_the_centre_cell");
    let (layout, _, queries, p) = one_projection(&mut rng, Method::Sample, Scope::Grid, 0);
    let n = layout.tokens();
    for q in &queries.grids {
        for i in 0..q.height {
            for j in 0..q.width {
                let row = q.query_offset + i * q.width + j;
                let cell = reference_methods::sample_cell(q, i, j);
                assert_eq!(
                    p[row * n + cell],
                    1.0,
                    "seed {seed}: query ({i}, {j}) of {:?}",
                    q.grid
                );
            }
        }
    }
    // A hand case: a 5x7 grid to 2x3 keeps rows 1, 3 and columns 1, 3, 5.
    let layout = Layout::new(35, vec![grid(0, 5, 7)]).unwrap();
    let queries = Queries {
        grids: vec![metacompress::QueryGrid {
            query_offset: 0,
            height: 2,
            width: 3,
            grid: grid(0, 5, 7),
        }],
        count: 6,
    };
    let kept: Vec<usize> = (0..2)
        .flat_map(|i| (0..3).map(move |j| (i, j)))
        .map(|(i, j)| metacompress::methods::sample_cell(&queries.grids[0], i, j))
        .collect();
    assert_eq!(kept, vec![8, 10, 12, 22, 24, 26]);
    assert_eq!(layout.tokens(), 35);
}

#[test]
fn pool_equals_the_pooling_windows_of_the_forward_pass() {
    let (seed, mut rng) = seeded("pool_equals_the_pooling_windows");
    let runner = Runner::new(None, Backend::Cpu, None, Precision::F32).unwrap();
    let layout = odd_layout(&mut rng);
    let (n, d) = (layout.tokens(), 19);
    let x = features(&mut rng, 1, n, d);
    let options = Options {
        keep: Keep::new(0.2).unwrap(),
        ..Options::default()
    };
    let request = Request {
        features: (&x).into(),
        layout: &layout,
        attention: None,
        seed: 0,
    };
    let result = runner.run(Method::Pool, &request, &options).unwrap();
    // SPEC section 4, step 3 on X (no position table): metacompress's own pooled queries.
    let x64: Vec<f64> = x.values().iter().map(|&v| v as f64).collect();
    let pooled = reference::pool(&x64, d, &result.queries);
    let error = relative_error(&result.tokens, &pooled);
    assert!(error <= 1e-6, "seed {seed}: pool vs pooling {error}");
}

#[test]
fn random_is_reproducible_from_its_seed() {
    let (_, rng) = seeded("random_is_reproducible_from_its_seed");
    let state = rng.clone();
    for scope in [Scope::Image, Scope::Grid] {
        let mut rng = rng.clone();
        let (_, _, _, first) = one_projection(&mut rng, Method::Random, scope, 11);
        let (_, _, _, again) = one_projection(&mut state.clone(), Method::Random, scope, 11);
        let (_, _, _, other) = one_projection(&mut state.clone(), Method::Random, scope, 12);
        assert_eq!(first, again, "same seed, same subset at {scope:?}");
        assert_ne!(first, other, "another seed, another subset at {scope:?}");
    }
}

#[test]
fn a_method_without_its_input_says_what_to_provide() {
    let (_, mut rng) = seeded("a_method_without_its_input");
    let runner = Runner::new(None, Backend::Cpu, None, Precision::F32).unwrap();
    let x = features(&mut rng, 1, 16, 5);
    let layout = Layout::square(16).unwrap();
    let request = Request {
        features: (&x).into(),
        layout: &layout,
        attention: None,
        seed: 0,
    };
    let error = runner
        .run(Method::MetaCompress, &request, &Options::default())
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "method metacompress needs P_meta weights; pass --weights W.safetensors"
    );
    for method in [Method::VisionZip, Method::PruMerge] {
        let error = runner
            .run(method, &request, &Options::default())
            .unwrap_err();
        assert!(
            error.to_string().contains("add a tensor `attention`"),
            "{}: {error}",
            method.name()
        );
    }
    let mut bad = vec![0.5; 16];
    bad[9] = -1.0;
    assert_eq!(
        check_attention(&bad, &[1, 16]).unwrap_err().to_string(),
        "attention[0, 9] is -1; expected non-negative values"
    );
    bad[9] = f32::NAN;
    assert!(check_attention(&bad, &[1, 16])
        .unwrap_err()
        .to_string()
        .contains("attention[0, 9] is NaN"));
    assert!(check_attention(&bad[..15], &[1, 16])
        .unwrap_err()
        .to_string()
        .contains("expected one per token"));
}

#[test]
fn fidelity_is_exact_for_the_identity_and_matches_hand_values() {
    let (seed, mut rng) = seeded("fidelity_is_exact_for_the_identity");
    // keep 1 on one grid: sample keeps every token, P = I.
    let layout = Layout::square(25).unwrap();
    let d = 9;
    let x = features(&mut rng, 1, 25, d);
    let queries = layout.queries(Keep::new(1.0).unwrap());
    let mut draws = <ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
    let p = projection(
        Method::Sample,
        Scope::Grid,
        x.image(0),
        d,
        None,
        &queries,
        &mut draws,
    )
    .unwrap();
    let probes = common::normal(&mut rng, 4 * d, 1.0);
    let f = fidelity(x.image(0), x.image(0), &p, &probes, d);
    assert!(
        f.attention_error < 1e-12 && f.proportional_error < 1e-12,
        "seed {seed}: {f:?}"
    );
    assert!(
        (f.coverage - 1.0).abs() < 1e-12 && (f.energy - 1.0).abs() < 1e-12,
        "seed {seed}: {f:?}"
    );

    // Hand case: three tokens, one reduced token along the first axis.
    let x = [3.0f32, 4.0, 1.0, 0.0, 0.0, 2.0];
    let y = [2.0f32, 0.0];
    let p = [0.5f32, 0.25, 0.25];
    let f = fidelity(&x, &y, &p, &[1.0, 0.0], 2);
    // energy: (9 + 1 + 0) / (9 + 16 + 1 + 4); coverage: (3/5 + 1 + 0) / 3
    assert!((f.energy - 10.0 / 30.0).abs() < 1e-12, "{f:?}");
    assert!((f.coverage - 1.6 / 3.0).abs() < 1e-12, "{f:?}");
    // one reduced token: its attention output is itself, y = (2, 0)
    let scale = 1.0 / 2f64.sqrt();
    let logits = [3.0 * scale, 1.0 * scale, 0.0];
    let total: f64 = logits.iter().map(|l: &f64| l.exp()).sum();
    let o = [
        (3.0 * logits[0].exp() + logits[1].exp()) / total,
        (4.0 * logits[0].exp() + 2.0 * logits[2].exp()) / total,
    ];
    let expected =
        ((o[0] - 2.0).powi(2) + o[1].powi(2)).sqrt() / (o[0] * o[0] + o[1] * o[1]).sqrt();
    assert!(
        (f.attention_error - expected).abs() < 1e-12,
        "{f:?} vs {expected}"
    );
    // one token standing for all three: its size is 3 (a constant shift of one logit)
    assert!((sizes(&p, 3)[0] - 3.0).abs() < 1e-12);
    assert!((f.proportional_error - expected).abs() < 1e-12);
    let pool = [0.5f32, 0.5, 0.0, 0.0, 0.0, 1.0];
    assert_eq!(sizes(&pool, 3), vec![2.0, 1.0]);
    let overlapping = [0.5f32, 0.5, 0.0, 0.0, 0.5, 0.5];
    assert_eq!(sizes(&overlapping, 3), vec![1.5, 1.5]);
}

fn decode(path: &std::path::Path) -> (u32, u32, Vec<u8>) {
    let file = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    let mut reader = png::Decoder::new(file).read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut pixels).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    (
        info.width,
        info.height,
        pixels[..info.buffer_size()].to_vec(),
    )
}

#[test]
fn pictures_decode_at_the_grids_size_and_show_the_kept_cells() {
    let (seed, mut rng) = seeded("pictures_decode_at_the_grids_size");
    let folder = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("pictures");
    let _ = std::fs::remove_dir_all(&folder);
    for scale in [1, 3] {
        let (layout, _, queries, p) = one_projection(&mut rng, Method::Sample, Scope::Grid, 0);
        let n = layout.tokens();
        let written = write_pictures(&folder, Method::Sample, &p, n, &queries, scale).unwrap();
        assert_eq!(written.len(), queries.grids.len());
        for (path, q) in written.iter().zip(&queries.grids) {
            let (width, height, rgb) = decode(path);
            assert_eq!(
                (width as usize, height as usize),
                (q.grid.width * scale, q.grid.height * scale),
                "seed {seed}: {}",
                path.display()
            );
            // A cell is coloured exactly where sample keeps its token.
            for cell in 0..q.grid.len() {
                let (r, c) = (cell / q.grid.width, cell % q.grid.width);
                let at = ((r * scale) * width as usize + c * scale) * 3;
                let kept = (0..q.len())
                    .any(|row| p[(q.query_offset + row) * n + q.grid.offset + cell] > 0.0);
                assert_eq!(
                    rgb[at..at + 3] != UNUSED,
                    kept,
                    "seed {seed}: cell {cell} of {}",
                    path.display()
                );
            }
        }
        let w = weights(&mut rng, 5, 3, None);
        let runner = Runner::new(Some(w), Backend::Cpu, None, Precision::F32).unwrap();
        let x = features(&mut rng, 1, n, 5);
        let request = Request {
            features: (&x).into(),
            layout: &layout,
            attention: None,
            seed: 0,
        };
        let options = Options {
            keep: Keep::new(0.3).unwrap(),
            save_projection: true,
            ..Options::default()
        };
        let result = runner
            .run(Method::MetaCompress, &request, &options)
            .unwrap();
        let written = write_pictures(
            &folder,
            Method::MetaCompress,
            result.projection.as_ref().unwrap(),
            n,
            &result.queries,
            scale,
        )
        .unwrap();
        assert!(
            written.len() > queries.grids.len(),
            "heat maps of rows as well"
        );
        for path in written {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let index: usize = name
                .split("grid")
                .nth(1)
                .unwrap()
                .split(['-', '.'])
                .next()
                .unwrap()
                .parse()
                .unwrap();
            let g = result.queries.grids[index].grid;
            let (width, height, _) = decode(&path);
            assert_eq!(
                (width as usize, height as usize),
                (g.width * scale, g.height * scale),
                "{name}"
            );
        }
    }
}

#[test]
fn the_gpu_reduction_agrees_in_chunks_and_in_f16() {
    let Some(context) = gpu() else {
        return;
    };
    let (seed, mut rng) = seeded("the_gpu_reduction_agrees_in_chunks_and_in_f16");
    let layout = odd_layout(&mut rng);
    let (b, n, d) = (5, layout.tokens(), 2 * rng.random_range(8..24) + 1);
    let x = features(&mut rng, b, n, d);
    let a = attention(&mut rng, b * n);
    let request = Request {
        features: (&x).into(),
        layout: &layout,
        attention: Some(&a),
        seed: 1,
    };
    let options = Options {
        keep: Keep::new(0.25).unwrap(),
        poison: true,
        ..Options::default()
    };
    let runner = Runner::on_context(None, context.clone(), Precision::F32).unwrap();
    // VisionZip and PruMerge: rows that do not sum to 1, weights past 1.
    for method in [
        Method::Pool,
        Method::Tome,
        Method::VisionZip,
        Method::PruMerge,
    ] {
        let what = format!("seed {seed}, {}", method.name());
        let whole = runner.run(method, &request, &options).unwrap();
        // Two images' features per binding: chunks of 2, 2 and 1 images.
        let chunked = Options {
            max_binding_bytes: Some((2 * n * d * 4) as u64),
            ..options
        };
        let parts = runner.run(method, &request, &chunked).unwrap();
        assert_eq!(whole.tokens, parts.tokens, "{what}: chunked != whole");
        let m = whole.queries.count;
        let p = whole.projection.as_ref().unwrap();
        let expected: Vec<f64> = (0..b)
            .flat_map(|image| {
                let p64: Vec<f64> = p[image * m * n..][..m * n]
                    .iter()
                    .map(|&v| v as f64)
                    .collect();
                reference::reduce(&p64, x.image(image), n, d)
            })
            .collect();
        let error = relative_error(&whole.tokens, &expected);
        assert!(error <= 1e-4, "{what}: f32 error {error}");
        // Split-K: the product cut along n into 3 pieces, summed after (n >= 32 here).
        assert!(n >= 33, "{what}: n {n} too short to split");
        let split = Options {
            split_k: SplitK::Pieces(3),
            ..chunked
        };
        let pieces = runner.run(method, &request, &split).unwrap();
        let error = relative_error(&pieces.tokens, &expected);
        assert!(error <= 1e-4, "{what}: split-K error {error}");
        // (Pool and ToMe rows weigh few tokens, so the pieces' sums may well give the same
        // bits as the whole product: only the error is checked.)
        // One image alone past the binding is refused, naming the buffer.
        let too_small = Options {
            max_binding_bytes: Some((n * d * 4 - 4) as u64),
            ..options
        };
        let refusal = runner
            .run(method, &request, &too_small)
            .unwrap_err()
            .to_string();
        assert!(refusal.contains("features need"), "{what}: {refusal}");
        if context.has_f16() {
            for precision in [Precision::F16, Precision::F16Acc] {
                let half = Runner::on_context(None, context.clone(), precision).unwrap();
                let result = half.run(method, &request, &options).unwrap();
                let error = relative_error(&result.tokens, &expected);
                assert!(error <= 1e-2, "{what}: {precision:?} error {error}");
            }
        }
    }
}

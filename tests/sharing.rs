//! One `P`, several token sets (`Runner::run_sharing`, for models such as Qwen3-VL whose
//! vision tower hands the language model deepstack features beside the main tokens): each
//! extra set's reduced tokens equal a separate float64 product with the same `P`, and the
//! main result equals a plain run, on every backend this machine has (the float64 reference,
//! the CPU path and, where there is an adapter, the GPU), at odd sizes on a strided layout
//! with loose tokens, with a batch.

mod common;

use common::{features, gpu, relative_error, seeded, weights};
use metacompress::methods::{Method, Request, Runner};
use metacompress::{Backend, Grid, HostTokens, Keep, Layout, Options, Precision};
use rand::Rng;

/// `P X` in float64 for each image (`P` `b x m x n`, `X` `b x n x d`).
fn product(p: &[f32], x: &[f32], b: usize, m: usize, n: usize, d: usize) -> Vec<f64> {
    let mut out = vec![0.0f64; b * m * d];
    for image in 0..b {
        for i in 0..m {
            for j in 0..n {
                let weight = p[(image * m + i) * n + j] as f64;
                if weight != 0.0 {
                    for c in 0..d {
                        out[(image * m + i) * d + c] += weight * x[(image * n + j) * d + c] as f64;
                    }
                }
            }
        }
    }
    out
}

#[test]
fn one_p_applied_to_several_token_sets_equals_separate_products() {
    let (seed, mut rng) = seeded("sharing");
    let (b, d, channels) = (2, rng.random_range(9..17), 5);
    // A strided grid (a loose token after each row), then a plain grid and loose tokens.
    let (h, w) = (rng.random_range(5..9), rng.random_range(5..9));
    let first = Grid::strided(0, h, w, w + 1);
    let second = Grid::new(h * (w + 1), 3, 7);
    let n = h * (w + 1) + 21 + 2;
    let layout = Layout::new(n, vec![first, second]).unwrap();
    let main = features(&mut rng, b, n, d);
    // Two deepstack-like levels: one of the same width, one wider.
    let levels = [features(&mut rng, b, n, d), features(&mut rng, b, n, d + 6)];
    let pmeta = weights(&mut rng, d, channels, Some((4, 4)));
    let mut runners = vec![
        (
            "cpu",
            Runner::new(Some(pmeta.clone()), Backend::Cpu, None, Precision::F32).unwrap(),
        ),
        (
            "reference",
            Runner::new(
                Some(pmeta.clone()),
                Backend::Reference,
                None,
                Precision::F32,
            )
            .unwrap(),
        ),
    ];
    if let Some(context) = gpu() {
        runners.push((
            "gpu",
            Runner::on_context(Some(pmeta.clone()), context, Precision::F32).unwrap(),
        ));
    }
    let options = Options {
        keep: Keep::new(0.3).unwrap(),
        poison: true,
        ..Options::default()
    };
    for (backend, runner) in &runners {
        for method in [Method::MetaCompress, Method::Pool, Method::Tome] {
            let what = format!("{backend} {}, seed {seed}", method.name());
            let request = Request {
                features: (&main).into(),
                layout: &layout,
                attention: None,
                seed: 7,
            };
            let extra: Vec<HostTokens> = levels.iter().map(HostTokens::from).collect();
            let shared = runner
                .run_sharing(method, &request, &extra, &options)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let plain = runner.run(method, &request, &options).unwrap();
            assert_eq!(shared.main.tokens, plain.tokens, "{what}: main tokens");
            // P is handed back only where a plain run would hand it back.
            assert_eq!(
                shared.main.projection.is_some(),
                plain.projection.is_some(),
                "{what}"
            );
            let with_p = Options {
                save_projection: true,
                ..options
            };
            let p = runner
                .run(method, &request, &with_p)
                .unwrap()
                .projection
                .unwrap();
            let m = shared.main.queries.count;
            assert_eq!(shared.extra.len(), levels.len(), "{what}");
            for (level, (reduced, x)) in shared.extra.iter().zip(&levels).enumerate() {
                let expected = product(&p, x.values(), b, m, n, x.width());
                assert_eq!(reduced.len(), b * m * x.width(), "{what} level {level}");
                let error = relative_error(reduced, &expected);
                assert!(error <= 1e-5, "{what} level {level}: error {error:e}");
            }
        }
        // A set of other images or tokens is refused in one line.
        let short = features(&mut rng, b, n - 1, d);
        let request = Request {
            features: (&main).into(),
            layout: &layout,
            attention: None,
            seed: 0,
        };
        let error = runner
            .run_sharing(Method::Pool, &request, &[(&short).into()], &options)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("extra token set 0") && error.contains(&format!("{}", n - 1)),
            "{error}"
        );
    }
}

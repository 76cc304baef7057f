//! The fast f32 CPU path against the float64 reference (SPEC section 7), on fresh random inputs
//! at odd sizes: both scopes, both associations of the scores, several grids with loose
//! tokens, resized tables, a batch.

mod common;

use common::{features, grid, relative_error, seeded, weights};
use metacompress::{
    reference, Association, Backend, Compressor, Keep, Layout, Options, Precision, Scope,
};
use rand::Rng;

#[test]
fn the_cpu_path_matches_the_reference() {
    let (seed, mut rng) = seeded("the_cpu_path_matches_the_reference");
    for round in 0..6 {
        let first = grid(
            rng.random_range(0..3),
            rng.random_range(2..9),
            rng.random_range(2..9),
        );
        let second = grid(
            first.end() + rng.random_range(0..4),
            rng.random_range(1..11),
            rng.random_range(2..11),
        );
        let tokens = second.end() + rng.random_range(0..6);
        let layout = Layout::new(tokens, vec![first, second]).unwrap();
        let width = rng.random_range(5..90) | 1;
        let channels = rng.random_range(1..width.min(30));
        let table = match round % 3 {
            0 => None,
            1 => Some((rng.random_range(1..12), rng.random_range(1..12))),
            _ => Some((first.height, first.width)),
        };
        let scope = if round % 2 == 0 {
            Scope::Image
        } else {
            Scope::Grid
        };
        let batch = 1 + round % 3;
        let keep = Keep::new(rng.random_range(0.05..1.0)).unwrap();
        let weights = weights(&mut rng, width, channels, table);
        let features = features(&mut rng, batch, tokens, width);
        let compressor =
            Compressor::new(weights.clone(), Backend::Cpu, None, Precision::F32).unwrap();
        let expected =
            reference::forward(&features, &weights, &layout, &layout.queries(keep), scope);
        for association in [Association::Keys, Association::Tokens] {
            let options = Options {
                keep,
                scope,
                association,
                save_projection: true,
                ..Options::default()
            };
            let out = compressor.compress(&features, &layout, &options).unwrap();
            let describe = format!(
                "seed {seed} round {round}: b {batch} n {tokens} d {width} d_c {channels} {:?} \
                 table {table:?} keep {} {scope:?} {association:?}",
                layout.grids(),
                keep.value()
            );
            let tokens_error = relative_error(&out.tokens, &expected.tokens);
            let projection_error =
                relative_error(out.projection.as_ref().unwrap(), &expected.projection);
            eprintln!("{describe}: tokens {tokens_error:.2e}, projection {projection_error:.2e}");
            assert!(
                tokens_error <= 1e-4,
                "{describe}: tokens error {tokens_error:e}"
            );
            assert!(
                projection_error <= 1e-4,
                "{describe}: projection error {projection_error:e}"
            );
        }
    }
}

#[test]
fn grid_scope_on_the_cpu_path_has_exact_zeros_outside_each_grid() {
    let (seed, mut rng) = seeded("cpu_grid_scope_zeros");
    let layout = Layout::new(40, vec![grid(1, 3, 5), grid(19, 4, 4)]).unwrap();
    let weights = weights(&mut rng, 11, 4, Some((3, 3)));
    let features = features(&mut rng, 2, 40, 11);
    let compressor = Compressor::new(weights, Backend::Cpu, None, Precision::F32).unwrap();
    let options = Options {
        keep: Keep::new(0.5).unwrap(),
        scope: Scope::Grid,
        save_projection: true,
        ..Options::default()
    };
    let out = compressor.compress(&features, &layout, &options).unwrap();
    let m = out.queries.count;
    for (row_index, row) in out.projection.unwrap().chunks_exact(40).enumerate() {
        let keys = out.queries.keys(row_index % m, Scope::Grid, 40);
        for (j, p) in row.iter().enumerate() {
            assert_eq!(
                keys.contains(j),
                *p != 0.0,
                "seed {seed}: row {row_index} column {j}: {p}"
            );
        }
    }
}

//! The fuzz targets' bodies, shared by the cargo-fuzz binaries (`fuzz/fuzz_targets/`) and the
//! corpus replay in `cargo test` (`tests/fuzz_replay.rs`). Each takes arbitrary bytes and
//! must return (an `Ok` or a clean `Err`) without panicking, and hold its invariants.

use std::path::Path;

use metacompress::files;
use metacompress::{
    parse_grid_flags, parse_grids_json, Backend, Compressor, Features, Grid, Keep, Layout, Options,
    PMeta, Scope,
};

/// The safetensors readers (input features and weights) on arbitrary file bytes.
pub fn file_readers(data: &[u8]) {
    let name = Path::new("fuzzed.safetensors");
    if let Ok(input) = files::input_from_bytes(name, data) {
        assert!(input.features().values().iter().all(|v| v.is_finite()));
        if let Some(grids) = input.grids.clone() {
            let _ = Layout::new(input.token_count(), grids);
        }
    }
    if let Ok(weights) = files::weights_from_bytes(name, data) {
        assert!(weights.w_q().iter().all(|v| v.is_finite()));
    }
}

/// The `grids` metadata, `--grid` flags and `--layout` presets on arbitrary text.
pub fn layout_parsers(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(grids) = parse_grids_json(text) {
        let _ = Layout::new(1 << 12, grids);
    }
    let flags: Vec<String> = text.split(';').map(str::to_string).collect();
    if let Ok(grids) = parse_grid_flags(&flags) {
        if let Ok(layout) = Layout::new(1 << 12, grids) {
            for grid in layout.grids() {
                assert!(grid.end() <= 1 << 12);
            }
        }
    }
    if let Ok(layout) = Layout::preset(text, None) {
        assert!(layout.tokens() > 0);
    }
}

/// `Compressor` on the CPU path with small arbitrary shapes, layouts, keep and scope: the
/// tokens are finite and every row of `P` sums to 1, or the call fails cleanly.
pub fn compressor(data: &[u8]) {
    if data.len() < 12 {
        return;
    }
    let byte = |i: usize| data[i] as usize;
    let (width, channels) = (1 + byte(0) % 9, 1 + byte(1) % 5);
    let tokens = 1 + byte(2) % 40;
    let grid_count = 1 + byte(3) % 3;
    let mut grids = Vec::new();
    for g in 0..grid_count {
        let at = 4 + 2 * g;
        let (height, grid_width) = (1 + byte(at) % 6, 1 + byte(at + 1) % 6);
        let stride = grid_width + byte(at) / 64;
        let offset = byte(at + 1) / 16;
        grids.push(Grid::strided(offset, height, grid_width, stride));
    }
    let keep = (1 + byte(10)) as f64 / 256.0;
    let scope = if byte(11) % 2 == 0 {
        Scope::Image
    } else {
        Scope::Grid
    };
    let Ok(layout) = Layout::new(tokens, grids) else {
        return;
    };
    let values: Vec<f32> = (0..tokens * width)
        .map(|i| (data[i % data.len()] as f32 - 128.0) / 32.0)
        .collect();
    let Ok(features) = Features::new(1, tokens, width, values) else {
        return;
    };
    let table = (byte(0) % 2 == 0).then_some((1 + byte(1) % 4, 1 + byte(2) % 4));
    let Ok(weights) = PMeta::init(width, channels.min(width), table, 1.0, 7) else {
        return;
    };
    let compressor = Compressor::new(weights, Backend::Cpu, None, metacompress::Precision::F32)
        .expect("the CPU backend opens");
    let options = Options {
        keep: Keep::new(keep).expect("keep in (0, 1]"),
        scope,
        save_projection: true,
        ..Options::default()
    };
    if let Ok(out) = compressor.compress(&features, &layout, &options) {
        assert!(out.tokens.iter().all(|v| v.is_finite()));
        let projection = out.projection.expect("asked for P");
        for row in projection.chunks_exact(tokens) {
            let sum: f64 = row.iter().map(|&v| v as f64).sum();
            assert!((sum - 1.0).abs() < 1e-4, "a row of P sums to {sum}");
        }
    }
}

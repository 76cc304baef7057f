//! `compare --png DIR`: pictures of what each method keeps, one pixel block per token of a
//! grid, written through the `png` crate.
//!
//! - `METHOD-grid{G}.png`: each input token coloured by the reduced token it gives most
//!   weight to (`argmax_i P[i, j]`), one colour per reduced token; tokens no row weighs are
//!   dark grey. Pruning shows the kept cells; merging shows regions.
//! - `metacompress-grid{G}-row{I}.png`: for a few queries `I` of the grid, the heat map of
//!   row `I` of `P` over the grid, scaled to the row's largest weight there (black, red,
//!   yellow, white).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::files::Outputs;
use crate::layout::{Grid, Queries};
use crate::methods::Method;

/// An RGB picture, 8 bits per channel.
pub struct Picture {
    /// Pixels across.
    pub width: usize,
    /// Pixels down.
    pub height: usize,
    /// `height x width x 3` bytes, row-major.
    pub rgb: Vec<u8>,
}

impl Picture {
    /// A grid's picture: each cell `scale x scale` pixels of `colour(row, column)`.
    pub fn of_grid(grid: &Grid, scale: usize, colour: impl Fn(usize, usize) -> [u8; 3]) -> Self {
        let (width, height) = (grid.width * scale, grid.height * scale);
        let mut rgb = Vec::with_capacity(width * height * 3);
        for y in 0..height {
            for x in 0..width {
                rgb.extend(colour(y / scale, x / scale));
            }
        }
        Picture { width, height, rgb }
    }

    /// The PNG encoding.
    pub fn png(&self) -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        let failed = |e: png::EncodingError| Error::Format(format!("cannot encode a PNG: {e}"));
        let mut encoder = png::Encoder::new(&mut bytes, self.width as u32, self.height as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(failed)?;
        writer.write_image_data(&self.rgb).map_err(failed)?;
        writer.finish().map_err(failed)?;
        Ok(bytes)
    }
}

/// A colour per reduced token: hues spaced by the golden angle, so neighbours differ.
pub fn token_colour(index: usize) -> [u8; 3] {
    let hue = (index as f64 * 0.618_033_988_749_895).fract() * 6.0;
    let (saturation, value) = (0.65, if index.is_multiple_of(2) { 0.95 } else { 0.75 });
    let chroma = value * saturation;
    let x = chroma * (1.0 - (hue % 2.0 - 1.0).abs());
    let (r, g, b) = match hue as u32 {
        0 => (chroma, x, 0.0),
        1 => (x, chroma, 0.0),
        2 => (0.0, chroma, x),
        3 => (0.0, x, chroma),
        4 => (x, 0.0, chroma),
        _ => (chroma, 0.0, x),
    };
    let lift = value - chroma;
    [r, g, b].map(|c| ((c + lift) * 255.0).round() as u8)
}

/// The colour of a weight in `[0, 1]` on a black-red-yellow-white scale.
pub fn heat_colour(value: f32) -> [u8; 3] {
    let v = value.clamp(0.0, 1.0) * 3.0;
    let channel = |c: f32| (c.clamp(0.0, 1.0) * 255.0).round() as u8;
    [channel(v), channel(v - 1.0), channel(v - 2.0)]
}

/// Colour of a token no row of `P` weighs.
pub const UNUSED: [u8; 3] = [40, 40, 40];

/// For each token of `grid` (row-major), the reduced token that weighs it most (`None` when
/// none does), from one image's `P` (`m x n`).
pub fn assignment(p: &[f32], n: usize, grid: &Grid) -> Vec<Option<usize>> {
    grid.tokens()
        .map(|token| {
            let mut best: Option<(usize, f32)> = None;
            for (row, weights) in p.chunks_exact(n).enumerate() {
                let w = weights[token];
                if w > 0.0 && best.is_none_or(|(_, top)| w > top) {
                    best = Some((row, w));
                }
            }
            best.map(|(row, _)| row)
        })
        .collect()
}

/// Up to four queries of a query grid, spread over it, as indices among all `m`.
pub fn sample_rows(first: usize, count: usize) -> Vec<usize> {
    let shown = count.min(4);
    (0..shown)
        .map(|k| first + (2 * k + 1) * count / (2 * shown))
        .collect()
}

/// Whether `name` is one `write_pictures` writes (`METHOD-grid{G}.png` or
/// `metacompress-grid{G}-row{I}.png`).
pub fn is_picture_name(name: &str) -> bool {
    let digits = |text: &str| !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    let Some((method, rest)) = name
        .strip_suffix(".png")
        .and_then(|stem| stem.split_once("-grid"))
    else {
        return false;
    };
    match rest.split_once("-row") {
        Some((grid, row)) => method == Method::MetaCompress.name() && digits(grid) && digits(row),
        None => Method::ALL.iter().any(|m| m.name() == method) && digits(rest),
    }
}

/// Writes the pictures of one method's `P` for one image into `folder` (made if missing), all
/// of them or none; the paths written.
pub fn write_pictures(
    folder: &Path,
    method: Method,
    p: &[f32],
    n: usize,
    queries: &Queries,
    scale: usize,
) -> Result<Vec<PathBuf>> {
    let mut outputs = Outputs::new();
    stage_pictures(&mut outputs, folder, method, p, n, queries, scale)?;
    outputs.commit()
}

/// Stages the pictures of one method's `P` for one image into `folder` (made by `outputs`
/// if missing), as part of `outputs`; the paths they will have once it is committed.
pub fn stage_pictures(
    outputs: &mut Outputs,
    folder: &Path,
    method: Method,
    p: &[f32],
    n: usize,
    queries: &Queries,
    scale: usize,
) -> Result<Vec<PathBuf>> {
    outputs.folder(folder)?;
    let mut written = Vec::new();
    let mut save = |name: String, picture: Picture| -> Result<()> {
        let path = folder.join(name);
        outputs.add(&path, &picture.png()?)?;
        written.push(path);
        Ok(())
    };
    for (index, query_grid) in queries.grids.iter().enumerate() {
        let grid = query_grid.grid;
        let owners = assignment(p, n, &grid);
        let picture = Picture::of_grid(&grid, scale, |row, column| {
            owners[row * grid.width + column].map_or(UNUSED, token_colour)
        });
        save(format!("{}-grid{index}.png", method.name()), picture)?;
        if method == Method::MetaCompress {
            for query in sample_rows(query_grid.query_offset, query_grid.len()) {
                let weights = &p[query * n..][..n];
                let largest = grid.tokens().map(|t| weights[t]).fold(0.0f32, f32::max);
                let picture = Picture::of_grid(&grid, scale, |row, column| {
                    let w = weights[grid.token(row, column)];
                    heat_colour(if largest > 0.0 { w / largest } else { 0.0 })
                });
                save(format!("metacompress-grid{index}-row{query}.png"), picture)?;
            }
        }
    }
    Ok(written)
}

//! Layout presets (SPEC section 3): the grids of real models' visual tokens, in the order
//! the models produce them, computed from what an application knows (the image's size, the
//! model's `grid_thw`), with the models' own arithmetic.
//!
//! - LLaVA-1.5: one 24x24 grid.
//! - LLaVA-NeXT (anyres, Hugging Face `LlavaNextForConditionalGeneration.pack_image_features`):
//!   the base image's 24x24 grid, then the crops stitched into one grid, unpadded to the
//!   image's aspect ratio (`unpad_image`), each row followed by one newline token (loose). The
//!   crop grid is chosen by `select_best_resolution` over the model's pinpoints.
//! - LLaVA-OneVision (`LlavaOnevisionModel.pack_image_features`): the same anyres packing on
//!   SigLIP's 27 x 27 tiles, with the crop grid down-sampled (bilinear) when it holds more
//!   than 9 tiles' worth of tokens (`anyres_max_9`); video frames pooled to 14 x 14 each, one
//!   newline token after the last.
//! - Qwen2-VL, Qwen2.5-VL, Qwen3-VL: after the 2x2 patch merger, one `h/2 x w/2` grid per
//!   temporal index.

use crate::error::{quoted, Error, Result};
use crate::layout::{check_token_count, Grid, Layout};

/// LLaVA-NeXT's default `image_grid_pinpoints`, as `[height, width]` pairs.
pub const LLAVA_NEXT_PINPOINTS: [[usize; 2]; 5] =
    [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]];

/// The vision tower's input size in LLaVA-1.5 and LLaVA-NeXT (CLIP ViT-L/14-336).
const TILE: usize = 336;
/// Its patch size.
const PATCH: usize = 14;
/// Patches per side of one tile (336 / 14).
const SIDE: usize = TILE / PATCH;

/// Largest image side (pixels) and grid side (patches) a preset accepts: far beyond any model,
/// small enough that no product of sizes overflows.
const MOST: usize = 1 << 20;

/// Most tokens a preset may describe: 16.7 million, far beyond any model (LLaVA-NeXT's largest
/// default resolution makes 2928, an hour of Qwen2-VL video at 2 frames a second about
/// 1.8 million at 336 x 336), so a preset past it is a typing error. Its token count is worked
/// out arithmetically and checked before any per-token table exists.
pub const MOST_PRESET_TOKENS: usize = 1 << 24;

/// A preset's token count and grids, worked out arithmetically: no per-token table yet.
struct Shape {
    tokens: usize,
    grids: Vec<Grid>,
}

impl Shape {
    /// Refuses a token count past `MOST_PRESET_TOKENS`, naming the preset.
    fn bounded(tokens: usize, name: impl Fn() -> String) -> Result<usize> {
        if tokens > MOST_PRESET_TOKENS {
            return Err(Error::InvalidArgument(format!(
                "{} makes {tokens} tokens; expected at most {MOST_PRESET_TOKENS}",
                name()
            )));
        }
        Ok(tokens)
    }

    /// The checked layout (the per-token checks run here, on a bounded count).
    fn layout(self) -> Result<Layout> {
        Layout::new(self.tokens, self.grids)
    }
}

impl Layout {
    /// LLaVA-1.5: one 24x24 grid, 576 tokens.
    pub fn llava15() -> Layout {
        Layout::new(SIDE * SIDE, vec![Grid::new(0, SIDE, SIDE)]).expect("a valid layout")
    }

    /// LLaVA-NeXT (anyres) for an image of `width x height` pixels and the model's
    /// `pinpoints` (`[height, width]` pairs, multiples of 336; `LLAVA_NEXT_PINPOINTS` by
    /// default): the base 24x24 grid, then the unpadded crop grid `H' x W'` with stride
    /// `W' + 1` (a newline token after each row).
    pub fn llava_next(width: usize, height: usize, pinpoints: &[[usize; 2]]) -> Result<Layout> {
        anyres_shape(&LLAVA_NEXT, width, height, pinpoints)?.layout()
    }

    /// Qwen2-VL for `grid_thw = (t, h, w)` (patches of 14 pixels; `h` and `w` even): one
    /// `h/2 x w/2` grid per temporal index, after the 2x2 patch merger.
    pub fn qwen2_vl(t: usize, h: usize, w: usize) -> Result<Layout> {
        qwen_vl_shape("qwen2-vl", t, h, w)?.layout()
    }

    /// LLaVA-OneVision (SigLIP tiles of 384 pixels, 27 x 27 patches; `anyres_max_9`) for an
    /// image of `width x height` pixels and the model's `pinpoints`
    /// (`LLAVA_ONEVISION_PINPOINTS` by default): the base 27x27 grid, then the unpadded crop
    /// grid, down-sampled as the model does when it holds more than 9 tiles' worth (x 1.1),
    /// with a newline token after each row.
    pub fn llava_onevision(
        width: usize,
        height: usize,
        pinpoints: &[[usize; 2]],
    ) -> Result<Layout> {
        anyres_shape(&LLAVA_ONEVISION, width, height, pinpoints)?.layout()
    }

    /// A preset by its command-line form: `llava-1.5`, `llava-next:WIDTHxHEIGHT` or
    /// `llava-onevision:WIDTHxHEIGHT` (with `pinpoints`, or the model's defaults),
    /// `llava-onevision-video:FRAMES`, or `qwen2-vl:TxHxW`, `qwen2.5-vl:TxHxW`,
    /// `qwen3-vl:TxHxW`.
    pub fn preset(text: &str, pinpoints: Option<&[[usize; 2]]>) -> Result<Layout> {
        preset_shape(text, pinpoints)?.layout()
    }

    /// A preset for features of `n` tokens: refused, before any per-token table exists, when
    /// the preset describes another number of tokens.
    pub fn preset_for(text: &str, pinpoints: Option<&[[usize; 2]]>, n: usize) -> Result<Layout> {
        let shape = preset_shape(text, pinpoints)?;
        check_token_count(shape.tokens, n)
            .map_err(|e| Error::InvalidArgument(format!("--layout {}: {e}", quoted(text))))?;
        shape.layout()
    }
}

/// An anyres model's tiling: the vision tower's tile (pixels) and its patches per side, and
/// for LLaVA-OneVision the `anyres_max_N` bound past which the crop grid is down-sampled.
struct Anyres {
    name: &'static str,
    tile: usize,
    side: usize,
    max_tiles: Option<usize>,
}

/// LLaVA-NeXT: CLIP ViT-L/14-336, 24 x 24 patches a tile, no down-sampling.
const LLAVA_NEXT: Anyres = Anyres {
    name: "llava-next",
    tile: TILE,
    side: SIDE,
    max_tiles: None,
};

/// LLaVA-OneVision: SigLIP so400m/14-384 (`image_size // patch_size` = 27 patches a side),
/// `vision_aspect_ratio = "anyres_max_9"`.
const LLAVA_ONEVISION: Anyres = Anyres {
    name: "llava-onevision",
    tile: ONEVISION_TILE,
    side: ONEVISION_TILE / PATCH,
    max_tiles: Some(9),
};

/// LLaVA-OneVision's vision tower input size.
const ONEVISION_TILE: usize = 384;

/// LLaVA-OneVision's default `image_grid_pinpoints` (`[height, width]`): every 1 x 1 to 6 x 6
/// arrangement of 384-pixel tiles, rows first, as its config lists them.
pub const LLAVA_ONEVISION_PINPOINTS: [[usize; 2]; 36] = {
    let mut pinpoints = [[0; 2]; 36];
    let mut index = 0;
    while index < 36 {
        pinpoints[index] = [
            (index / 6 + 1) * ONEVISION_TILE,
            (index % 6 + 1) * ONEVISION_TILE,
        ];
        index += 1;
    }
    pinpoints
};

/// An anyres model's token count and grids for an image of `width x height` pixels: the base
/// tile's grid, then the crops stitched and unpadded (`unpad_image`), down-sampled where the
/// model bounds them (LLaVA-OneVision), each row followed by a newline token (loose).
fn anyres_shape(
    model: &Anyres,
    width: usize,
    height: usize,
    pinpoints: &[[usize; 2]],
) -> Result<Shape> {
    let (name, tile, side) = (model.name, model.tile, model.side);
    for (what, value) in [("width", width), ("height", height)] {
        if value == 0 || value > MOST {
            return Err(Error::InvalidArgument(format!(
                "{name} image {what} {value} is out of range; expected 1 to {MOST} pixels"
            )));
        }
    }
    if pinpoints.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{name} pinpoints: an empty list; expected [height, width] pairs such as \
             [[{tile},{}],[{},{}]]",
            2 * tile,
            2 * tile,
            2 * tile
        )));
    }
    for &[h, w] in pinpoints {
        if h == 0 || w == 0 || h % tile != 0 || w % tile != 0 || h > MOST || w > MOST {
            return Err(Error::InvalidArgument(format!(
                "{name} pinpoint [{h}, {w}] is not a resolution the model tiles; expected \
                 multiples of {tile} up to {MOST}"
            )));
        }
    }
    let [best_height, best_width] = best_resolution(width, height, pinpoints);
    let (mut rows, mut columns) = unpadded(
        (best_height / tile) * side,
        (best_width / tile) * side,
        width,
        height,
    );
    if let Some(max_tiles) = model.max_tiles {
        // `pack_image_features`: ratio = sqrt(h * w / (N * side^2)); past 1.1, bilinear
        // interpolation to (int(h // ratio), int(w // ratio)).
        let ratio = ((rows * columns) as f64 / (max_tiles * side * side) as f64).sqrt();
        if ratio > 1.1 {
            (rows, columns) = (
                python_floor_div(rows, ratio),
                python_floor_div(columns, ratio),
            );
        }
    }
    // Each crop row is followed by a newline token, even a row that unpadding left empty
    // (an image so thin that no crop column survives: newline tokens alone).
    let product = rows
        .checked_mul(columns + 1)
        .and_then(|crops| crops.checked_add(side * side));
    let tokens = Shape::bounded(product.unwrap_or(usize::MAX), || {
        format!("{name}:{width}x{height} with pinpoint [{best_height}, {best_width}]")
    })?;
    let mut grids = vec![Grid::new(0, side, side)];
    if rows > 0 && columns > 0 {
        grids.push(Grid::strided(side * side, rows, columns, columns + 1));
    }
    Ok(Shape { tokens, grids })
}

/// Python's `a // b` for a whole `a >= 0` and a float `b > 0`, truncated by `int()`: CPython's
/// float floor division (from `fmod`, rounding the quotient to the nearest whole number when
/// the division is off by a rounding error), not `floor(a / b)`.
fn python_floor_div(a: usize, b: f64) -> usize {
    let a = a as f64;
    let division = (a - a % b) / b;
    let mut floor = division.floor();
    if division - floor > 0.5 {
        floor += 1.0;
    }
    floor as usize
}

/// LLaVA-OneVision video (`get_video_features`): each frame's 27 x 27 grid pooled by
/// bilinear interpolation to 14 x 14 (`apply_pooling`: `ceil(27 / 2)`), the frames one after
/// another, then one newline token after the last frame (loose).
fn onevision_video_shape(frames: usize) -> Result<Shape> {
    let side = (ONEVISION_TILE / PATCH).div_ceil(2);
    if frames == 0 || frames > MOST {
        return Err(Error::InvalidArgument(format!(
            "llava-onevision-video frames = {frames} is out of range; expected 1 to {MOST}"
        )));
    }
    let per_frame = side * side;
    let tokens = Shape::bounded(frames * per_frame + 1, || {
        format!("llava-onevision-video:{frames}")
    })?;
    let grids = (0..frames)
        .map(|frame| Grid::new(frame * per_frame, side, side))
        .collect();
    Ok(Shape { tokens, grids })
}

/// The Qwen-VL families' token count and grids for `grid_thw = (t, h, w)` (see
/// `Layout::qwen2_vl`): Qwen2-VL, Qwen2.5-VL (whose windowed vision tower restores the row-major
/// order before its merger hands the tokens on) and Qwen3-VL (patches of 16 pixels) all merge
/// 2x2 patches into one `h/2 x w/2` grid per temporal index.
fn qwen_vl_shape(name: &str, t: usize, h: usize, w: usize) -> Result<Shape> {
    if t == 0 || t > MOST {
        return Err(Error::InvalidArgument(format!(
            "{name} grid_thw t = {t} is out of range; expected 1 to {MOST} temporal patches"
        )));
    }
    for (what, value) in [("h", h), ("w", w)] {
        if value == 0 || value % 2 != 0 || value > MOST {
            return Err(Error::InvalidArgument(format!(
                "{name} grid_thw {what} = {value} is not a merged grid side; expected an even \
                 number of patches from 2 to {MOST}"
            )));
        }
    }
    let (rows, columns) = (h / 2, w / 2);
    let product = t.checked_mul(rows).and_then(|v| v.checked_mul(columns));
    let tokens = Shape::bounded(product.unwrap_or(usize::MAX), || {
        format!("{name} grid_thw {t}x{h}x{w}")
    })?;
    let per_frame = rows * columns;
    let grids = (0..t)
        .map(|frame| Grid::new(frame * per_frame, rows, columns))
        .collect();
    Ok(Shape { tokens, grids })
}

/// A preset's token count and grids by its command-line form (see `Layout::preset`).
fn preset_shape(text: &str, pinpoints: Option<&[[usize; 2]]>) -> Result<Shape> {
    let bad = || {
        Error::InvalidArgument(format!(
            "--layout {} is not a layout preset; expected llava-1.5, llava-next:WIDTHxHEIGHT \
             (such as llava-next:1000x667), llava-onevision:WIDTHxHEIGHT, \
             llava-onevision-video:FRAMES, or qwen2-vl:TxHxW, qwen2.5-vl:TxHxW, qwen3-vl:TxHxW \
             (such as qwen2-vl:1x28x42)",
            quoted(text)
        ))
    };
    let (name, arguments) = match text.split_once(':') {
        Some((name, arguments)) => (name.trim(), Some(arguments)),
        None => (text.trim(), None),
    };
    let numbers = |arguments: Option<&str>, count: usize| -> Result<Vec<usize>> {
        let parts: Vec<&str> = arguments.ok_or_else(bad)?.split(['x', 'X']).collect();
        if parts.len() != count {
            return Err(bad());
        }
        parts
            .iter()
            .map(|part| part.trim().parse::<usize>().map_err(|_| bad()))
            .collect()
    };
    if pinpoints.is_some() && name != "llava-next" && name != "llava-onevision" {
        return Err(Error::InvalidArgument(format!(
            "--pinpoints is for the llava-next and llava-onevision presets; --layout {} takes \
             none",
            quoted(text)
        )));
    }
    match name {
        "llava-1.5" | "llava15" if arguments.is_none() => Ok(Shape {
            tokens: SIDE * SIDE,
            grids: vec![Grid::new(0, SIDE, SIDE)],
        }),
        "llava-next" => {
            let size = numbers(arguments, 2)?;
            let pinpoints = pinpoints.unwrap_or(&LLAVA_NEXT_PINPOINTS);
            anyres_shape(&LLAVA_NEXT, size[0], size[1], pinpoints)
        }
        "llava-onevision" => {
            let size = numbers(arguments, 2)?;
            let pinpoints = pinpoints.unwrap_or(&LLAVA_ONEVISION_PINPOINTS);
            anyres_shape(&LLAVA_ONEVISION, size[0], size[1], pinpoints)
        }
        "llava-onevision-video" => onevision_video_shape(numbers(arguments, 1)?[0]),
        "qwen2-vl" | "qwen2.5-vl" | "qwen3-vl" => {
            let thw = numbers(arguments, 3)?;
            qwen_vl_shape(name, thw[0], thw[1], thw[2])
        }
        _ => Err(bad()),
    }
}

/// Parses `--pinpoints`: a JSON list of `[height, width]` pairs, as in a model's
/// `image_grid_pinpoints`.
pub fn parse_pinpoints(text: &str) -> Result<Vec<[usize; 2]>> {
    let bad = || {
        Error::InvalidArgument(format!(
            "--pinpoints {} is not a list of resolutions; expected a JSON list of [height, \
             width] pairs such as [[336,672],[672,336],[672,672]]",
            quoted(text)
        ))
    };
    let pairs: Vec<Vec<u64>> = serde_json::from_str(text).map_err(|_| bad())?;
    pairs
        .into_iter()
        .map(|pair| match pair.as_slice() {
            [h, w] => Ok([
                usize::try_from(*h).map_err(|_| bad())?,
                usize::try_from(*w).map_err(|_| bad())?,
            ]),
            _ => Err(bad()),
        })
        .collect()
}

/// `select_best_resolution`: the pinpoint that keeps the most of the image's pixels when it
/// is scaled to fit, the least padding on ties (the first such pinpoint on a full tie).
fn best_resolution(width: usize, height: usize, pinpoints: &[[usize; 2]]) -> [usize; 2] {
    let (original_width, original_height) = (width as f64, height as f64);
    let mut best = pinpoints[0];
    let mut most_effective = 0u64;
    let mut least_wasted = u64::MAX;
    for &[pin_height, pin_width] in pinpoints {
        let scale = f64::min(
            pin_width as f64 / original_width,
            pin_height as f64 / original_height,
        );
        // Python's int(): truncation toward zero.
        let scaled_width = (original_width * scale) as u64;
        let scaled_height = (original_height * scale) as u64;
        let effective = (scaled_width * scaled_height).min(width as u64 * height as u64);
        let wasted = (pin_width * pin_height) as u64 - effective;
        if effective > most_effective || (effective == most_effective && wasted < least_wasted) {
            most_effective = effective;
            least_wasted = wasted;
            best = [pin_height, pin_width];
        }
    }
    best
}

/// `unpad_image`: the rows and columns of a `rows x columns` patch grid left after the
/// padding that fitted a `width x height` image into it is cut away (centred; an odd
/// difference keeps the extra row or column).
fn unpadded(rows: usize, columns: usize, width: usize, height: usize) -> (usize, usize) {
    let original_aspect = width as f64 / height as f64;
    let current_aspect = columns as f64 / rows as f64;
    if original_aspect > current_aspect {
        let scale = columns as f64 / width as f64;
        let new_rows = round_to_7_places(height as f64 * scale) as usize;
        let padding = (rows - new_rows.min(rows)) / 2;
        (rows - 2 * padding, columns)
    } else {
        let scale = rows as f64 / height as f64;
        let new_columns = round_to_7_places(width as f64 * scale) as usize;
        let padding = (columns - new_columns.min(columns)) / 2;
        (rows, columns - 2 * padding)
    }
}

/// Python's `round(value, 7)` for the sizes here (then truncated by the caller's `int()`).
fn round_to_7_places(value: f64) -> f64 {
    (value * 1e7).round() / 1e7
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_square_image_takes_2x2_crops_with_a_newline_per_row() {
        let layout = Layout::llava_next(672, 672, &LLAVA_NEXT_PINPOINTS).unwrap();
        assert_eq!(layout.tokens(), 2928);
        assert_eq!(
            layout.grids(),
            &[Grid::new(0, 24, 24), Grid::strided(576, 48, 48, 49)]
        );
    }

    #[test]
    fn a_wide_photo_is_unpadded_in_height() {
        let layout = Layout::llava_next(1000, 667, &LLAVA_NEXT_PINPOINTS).unwrap();
        assert_eq!(layout.grids()[1], Grid::strided(576, 32, 48, 49));
        assert_eq!(layout.tokens(), 576 + 32 * 49);
    }

    #[test]
    fn presets_parse_and_refuse() {
        assert_eq!(
            Layout::preset("llava-1.5", None).unwrap(),
            Layout::llava15()
        );
        assert_eq!(
            Layout::preset("qwen2-vl:2x28x42", None).unwrap().grids(),
            &[Grid::new(0, 14, 21), Grid::new(294, 14, 21)]
        );
        for bad in [
            "llava-next",
            "llava-next:0x10",
            "llava-next:10x",
            "qwen2-vl:1x27x42",
            "qwen2-vl:0x28x28",
            "gpt:1",
            "llava-1.5:3",
        ] {
            assert!(Layout::preset(bad, None).is_err(), "{bad}");
        }
        assert!(Layout::preset("qwen2-vl:1x28x28", Some(&[[336, 336]])).is_err());
        assert!(Layout::llava_next(10, 10, &[]).is_err());
        assert!(Layout::llava_next(10, 10, &[[300, 336]]).is_err());
        assert_eq!(
            parse_pinpoints("[[336,672],[672,336]]").unwrap(),
            vec![[336, 672], [672, 336]]
        );
        assert!(parse_pinpoints("[[336]]").is_err());
        assert!(parse_pinpoints("[[-1,2]]").is_err());
    }
}

//! Layout presets (SPEC section 3): the grids of real models' visual tokens, in the order
//! the models produce them, computed from what an application knows (the image's size, the
//! model's `grid_thw`), with the models' own arithmetic.
//!
//! - LLaVA-1.5: one 24x24 grid.
//! - LLaVA-NeXT (anyres, Hugging Face `LlavaNextForConditionalGeneration.pack_image_features`):
//!   the base image's 24x24 grid, then the crops stitched into one grid, unpadded to the
//!   image's aspect ratio (`unpad_image`), each row followed by one newline token (loose). The
//!   crop grid is chosen by `select_best_resolution` over the model's pinpoints.
//! - Qwen2-VL: after the 2x2 patch merger, one `h/2 x w/2` grid per temporal index.

use crate::error::{quoted, Error, Result};
use crate::layout::{Grid, Layout};

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
        for (name, value) in [("width", width), ("height", height)] {
            if value == 0 || value > MOST {
                return Err(Error::InvalidArgument(format!(
                    "llava-next image {name} {value} is out of range; expected 1 to {MOST} pixels"
                )));
            }
        }
        if pinpoints.is_empty() {
            return Err(Error::InvalidArgument(
                "llava-next pinpoints: an empty list; expected [height, width] pairs such as \
                 [[336,672],[672,672]]"
                    .into(),
            ));
        }
        for &[h, w] in pinpoints {
            if h == 0 || w == 0 || h % TILE != 0 || w % TILE != 0 || h > MOST || w > MOST {
                return Err(Error::InvalidArgument(format!(
                    "llava-next pinpoint [{h}, {w}] is not a resolution the model tiles; \
                     expected multiples of {TILE} up to {MOST}"
                )));
            }
        }
        let [best_height, best_width] = best_resolution(width, height, pinpoints);
        let (rows, columns) = unpadded(
            (best_height / TILE) * SIDE,
            (best_width / TILE) * SIDE,
            width,
            height,
        );
        // Each crop row is followed by a newline token, even a row that unpadding left empty
        // (an image so thin that no crop column survives: newline tokens alone).
        let tokens = SIDE * SIDE + rows * (columns + 1);
        let mut grids = vec![Grid::new(0, SIDE, SIDE)];
        if rows > 0 && columns > 0 {
            grids.push(Grid::strided(SIDE * SIDE, rows, columns, columns + 1));
        }
        Layout::new(tokens, grids)
    }

    /// Qwen2-VL for `grid_thw = (t, h, w)` (patches of 14 pixels; `h` and `w` even): one
    /// `h/2 x w/2` grid per temporal index, after the 2x2 patch merger.
    pub fn qwen2_vl(t: usize, h: usize, w: usize) -> Result<Layout> {
        if t == 0 || t > MOST {
            return Err(Error::InvalidArgument(format!(
                "qwen2-vl grid_thw t = {t} is out of range; expected 1 to {MOST} temporal patches"
            )));
        }
        for (name, value) in [("h", h), ("w", w)] {
            if value == 0 || value % 2 != 0 || value > MOST {
                return Err(Error::InvalidArgument(format!(
                    "qwen2-vl grid_thw {name} = {value} is not a merged grid side; expected an \
                     even number of patches from 2 to {MOST}"
                )));
            }
        }
        let (rows, columns) = (h / 2, w / 2);
        let per_frame = rows
            .checked_mul(columns)
            .filter(|per| per.checked_mul(t).is_some_and(|n| n <= MOST * MOST))
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "qwen2-vl grid_thw {t}x{h}x{w} makes too many tokens"
                ))
            })?;
        let grids = (0..t)
            .map(|frame| Grid::new(frame * per_frame, rows, columns))
            .collect();
        Layout::new(t * per_frame, grids)
    }

    /// A preset for `tokens` tokens per image: `preset`'s layout, refused (as a usage error
    /// naming the preset) when it does not describe that many tokens.
    pub fn preset_for(
        text: &str,
        pinpoints: Option<&[[usize; 2]]>,
        tokens: usize,
    ) -> Result<Layout> {
        let layout = Layout::preset(text, pinpoints)?;
        layout
            .check_tokens(tokens)
            .map_err(|e| Error::InvalidArgument(format!("--layout {text}: {e}")))?;
        Ok(layout)
    }

    /// A preset by its command-line form: `llava-1.5`, `llava-next:WIDTHxHEIGHT` (with
    /// `pinpoints`, or LLaVA-NeXT's defaults) or `qwen2-vl:TxHxW`.
    pub fn preset(text: &str, pinpoints: Option<&[[usize; 2]]>) -> Result<Layout> {
        let bad = || {
            Error::InvalidArgument(format!(
                "--layout {} is not a layout preset; expected llava-1.5, llava-next:WIDTHxHEIGHT \
                 (such as llava-next:1000x667) or qwen2-vl:TxHxW (such as qwen2-vl:1x28x42)",
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
        if pinpoints.is_some() && name != "llava-next" {
            return Err(Error::InvalidArgument(format!(
                "--pinpoints is for the llava-next preset; --layout {} takes none",
                quoted(text)
            )));
        }
        match name {
            "llava-1.5" | "llava15" if arguments.is_none() => Ok(Layout::llava15()),
            "llava-next" => {
                let size = numbers(arguments, 2)?;
                Layout::llava_next(size[0], size[1], pinpoints.unwrap_or(&LLAVA_NEXT_PINPOINTS))
            }
            "qwen2-vl" => {
                let thw = numbers(arguments, 3)?;
                Layout::qwen2_vl(thw[0], thw[1], thw[2])
            }
            _ => Err(bad()),
        }
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

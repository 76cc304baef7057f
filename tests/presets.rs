//! Layout presets against an independent implementation of the models' own arithmetic,
//! written here from Hugging Face's published code (transformers'
//! `models/llava_next/modeling_llava_next.py`: `select_best_resolution`,
//! `get_anyres_image_grid_shape`, `unpad_image`, `pack_image_features`; and Qwen2-VL's 2x2
//! patch merger; `models/llava_onevision/modeling_llava_onevision.py`: the same anyres packing
//! on 384-pixel SigLIP tiles with `anyres_max_9` down-sampling, and `get_video_features`), not
//! from the library's: token counts and grid positions must be identical for hundreds of
//! image sizes per family.

use metacompress::{Grid, Layout, LLAVA_NEXT_PINPOINTS, LLAVA_ONEVISION_PINPOINTS};

/// Python's `round(x, 7)` followed by `int()`: the decimal string rounded to 7 places (Rust's
/// formatting, like CPython's, is correctly rounded), truncated toward zero.
fn python_int_round7(x: f64) -> i64 {
    format!("{x:.7}").parse::<f64>().unwrap().trunc() as i64
}

/// `select_best_resolution(original_size=(height, width), possible_resolutions)`.
fn select_best_resolution(height: i64, width: i64, pinpoints: &[[usize; 2]]) -> (i64, i64) {
    let (original_height, original_width) = (height as f64, width as f64);
    let mut best_fit = None;
    let mut max_effective_resolution = 0i64;
    let mut min_wasted_resolution = f64::INFINITY;
    for &[h, w] in pinpoints {
        let (h, w) = (h as f64, w as f64);
        let scale = (w / original_width).min(h / original_height);
        let downscaled_width = (original_width * scale) as i64;
        let downscaled_height = (original_height * scale) as i64;
        let effective_resolution = (downscaled_width * downscaled_height).min(width * height);
        let wasted_resolution = (w * h) - effective_resolution as f64;
        if effective_resolution > max_effective_resolution
            || (effective_resolution == max_effective_resolution
                && wasted_resolution < min_wasted_resolution)
        {
            max_effective_resolution = effective_resolution;
            min_wasted_resolution = wasted_resolution;
            best_fit = Some((h as i64, w as i64));
        }
    }
    best_fit.unwrap()
}

/// What `pack_image_features` produces for one image of `width x height` pixels, as the list
/// of where each token comes from: `Base(r, c)`, `Crop(r, c)` (of the unpadded grid) or
/// `Newline(r)`.
#[derive(Debug, PartialEq, Clone, Copy)]
enum Source {
    Base(usize, usize),
    Crop(usize, usize),
    Newline(usize),
}

fn pack_image_features(width: i64, height: i64, pinpoints: &[[usize; 2]]) -> Vec<Source> {
    pack_anyres(width, height, pinpoints, 336, None)
}

/// CPython's float floor division `vx // wx` (`float_floor_div`: fmod, then the quotient
/// rounded to the nearest whole number when it is off by a rounding error).
fn python_float_floor_div(vx: f64, wx: f64) -> f64 {
    let mut modulo = vx % wx;
    let mut div = (vx - modulo) / wx;
    if modulo != 0.0 && ((wx < 0.0) != (modulo < 0.0)) {
        modulo += wx;
        div -= 1.0;
    }
    let _ = modulo;
    if div == 0.0 {
        return 0.0;
    }
    let mut floordiv = div.floor();
    if div - floordiv > 0.5 {
        floordiv += 1.0;
    }
    floordiv
}

/// `pack_image_features` of an anyres model with tiles of `image_size` pixels (patch 14) and,
/// for LLaVA-OneVision, `vision_aspect_ratio = "anyres_max_{max_num_patches}"`.
fn pack_anyres(
    width: i64,
    height: i64,
    pinpoints: &[[usize; 2]],
    image_size: i64,
    max_num_patches: Option<i64>,
) -> Vec<Source> {
    let patch = 14;
    let side = image_size / patch; // vision_config.image_size // patch_size
    let (best_height, best_width) = select_best_resolution(height, width, pinpoints);
    let (num_patch_height, num_patch_width) = (best_height / image_size, best_width / image_size);
    // view(nph, npw, h, w, -1).permute(4, 0, 2, 1, 3).flatten(1, 2).flatten(2, 3)
    let (current_height, current_width) = (num_patch_height * side, num_patch_width * side);
    // unpad_image(tensor, original_size=(height, width))
    let original_aspect_ratio = width as f64 / height as f64;
    let current_aspect_ratio = current_width as f64 / current_height as f64;
    let (rows, columns) = if original_aspect_ratio > current_aspect_ratio {
        let scale_factor = current_width as f64 / width as f64;
        let new_height = python_int_round7(height as f64 * scale_factor);
        let padding = (current_height - new_height).div_euclid(2);
        (padding..current_height - padding, 0..current_width)
    } else {
        let scale_factor = current_height as f64 / height as f64;
        let new_width = python_int_round7(width as f64 * scale_factor);
        let padding = (current_width - new_width).div_euclid(2);
        (0..current_height, padding..current_width - padding)
    };
    let (mut rows, mut columns) = (0..rows.end - rows.start, 0..columns.end - columns.start);
    if let Some(max_num_patches) = max_num_patches {
        // ratio = math.sqrt(curr_height * curr_width / (max_num_patches * height**2)); past
        // 1.1, interpolate(..., [int(curr_height // ratio), int(curr_width // ratio)])
        let (curr_height, curr_width) = (rows.end, columns.end);
        let ratio =
            ((curr_height * curr_width) as f64 / (max_num_patches * side * side) as f64).sqrt();
        if ratio > 1.1 {
            rows = 0..python_float_floor_div(curr_height as f64, ratio) as i64;
            columns = 0..python_float_floor_div(curr_width as f64, ratio) as i64;
        }
    }
    let mut tokens = Vec::new();
    for r in 0..side {
        for c in 0..side {
            tokens.push(Source::Base(r as usize, c as usize));
        }
    }
    // cat(newline on the last axis), flatten(1, 2).transpose(0, 1)
    for (r, _) in rows.clone().enumerate() {
        for (c, _) in columns.clone().enumerate() {
            tokens.push(Source::Crop(r, c));
        }
        tokens.push(Source::Newline(r));
    }
    tokens
}

/// Where each token of `layout` comes from, by SPEC section 3 (token `(r, c)` of a grid at
/// `offset + r * stride + c`; the first grid the base, the second the crops; loose tokens in
/// between rows are newlines, counted in order).
fn sources_of(layout: &Layout) -> Vec<Source> {
    let mut sources = vec![None; layout.tokens()];
    for (index, grid) in layout.grids().iter().enumerate() {
        for r in 0..grid.height {
            for c in 0..grid.width {
                let token = grid.offset + r * grid.stride + c;
                sources[token] = Some(match index {
                    0 => Source::Base(r, c),
                    _ => Source::Crop(r, c),
                });
            }
        }
    }
    let mut newlines = 0;
    sources
        .into_iter()
        .map(|source| {
            source.unwrap_or_else(|| {
                newlines += 1;
                Source::Newline(newlines - 1)
            })
        })
        .collect()
}

/// `layout`'s token count and the source of each token are the model's.
fn assert_sources(layout: &Layout, expected: &[Source], what: &str) {
    assert_eq!(layout.tokens(), expected.len(), "{what}: token count");
    assert_eq!(sources_of(layout), expected, "{what}: token order");
}

/// A few hundred image sizes: squares, every pinpoint exactly, wide, tall, tiny, odd, huge.
fn image_sizes() -> Vec<(i64, i64)> {
    let mut sizes = vec![
        (672, 672),
        (1000, 667),
        (667, 1000),
        (336, 336),
        (1, 1),
        (1, 1000),
        (1000, 1),
        (3, 5000),
        (5000, 3),
        (14, 14),
        (4032, 3024),
        (1920, 1080),
        (1080, 1920),
    ];
    for &[h, w] in LLAVA_NEXT_PINPOINTS
        .iter()
        .chain(&LLAVA_ONEVISION_PINPOINTS)
    {
        sizes.push((w as i64, h as i64));
    }
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = |most: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % most) as i64 + 1
    };
    for _ in 0..300 {
        sizes.push((next(2400), next(2400)));
    }
    for _ in 0..100 {
        sizes.push((next(6000), next(6000)));
    }
    for _ in 0..60 {
        sizes.push((next(60), next(3000)));
        sizes.push((next(3000), next(60)));
    }
    sizes
}

#[test]
fn llava_next_matches_the_models_token_order_for_hundreds_of_images() {
    let others: Vec<[usize; 2]> = vec![
        [336, 336],
        [336, 672],
        [672, 336],
        [672, 672],
        [336, 1008],
        [1008, 336],
        [336, 1344],
        [1344, 336],
        [1008, 1008],
        [672, 1344],
    ];
    for pinpoints in [LLAVA_NEXT_PINPOINTS.to_vec(), others] {
        for (width, height) in image_sizes() {
            let expected = pack_image_features(width, height, &pinpoints);
            let layout = Layout::llava_next(width as usize, height as usize, &pinpoints)
                .unwrap_or_else(|e| panic!("{width}x{height}: {e}"));
            assert_sources(
                &layout,
                &expected,
                &format!("{width}x{height} {pinpoints:?}"),
            );
            // The crop grid, when there is one, has a newline token after each row.
            if let Some(crops) = layout.grids().get(1) {
                assert_eq!(crops.stride, crops.width + 1, "{width}x{height}");
                assert_eq!(crops.offset, 576, "{width}x{height}");
            }
        }
    }
}

#[test]
fn llava_next_hand_cases() {
    let square = Layout::llava_next(672, 672, &LLAVA_NEXT_PINPOINTS).unwrap();
    assert_eq!(square.tokens(), 2928);
    assert_eq!(
        square.grids(),
        &[Grid::new(0, 24, 24), Grid::strided(576, 48, 48, 49)]
    );
    let photo = Layout::llava_next(1000, 667, &LLAVA_NEXT_PINPOINTS).unwrap();
    assert_eq!(photo.grids()[1], Grid::strided(576, 32, 48, 49));
    assert_eq!(photo.tokens(), 2144);
    let preset = Layout::preset("llava-next:1000x667", None).unwrap();
    assert_eq!(preset, photo);
}

/// Qwen2-VL: `grid_thw = (t, h, w)` patches; the merger joins 2x2 patches, in row-major
/// order of the merged grid, frame after frame: `t * (h/2) * (w/2)` tokens.
#[test]
fn qwen2_vl_merges_2x2_patches_frame_by_frame() {
    let mut checked = 0;
    for t in [1usize, 2, 3, 5] {
        for h in (2..=80).step_by(6) {
            for w in (2..=90).step_by(8) {
                let layout = Layout::qwen2_vl(t, h, w).unwrap();
                let (rows, columns) = (h / 2, w / 2);
                assert_eq!(layout.tokens(), t * rows * columns, "{t}x{h}x{w}");
                assert_eq!(layout.grids().len(), t);
                for (frame, grid) in layout.grids().iter().enumerate() {
                    assert_eq!(
                        (grid.offset, grid.height, grid.width, grid.stride),
                        (frame * rows * columns, rows, columns, columns),
                        "{t}x{h}x{w} frame {frame}"
                    );
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 300);
    assert!(Layout::qwen2_vl(1, 27, 42).is_err());
    assert!(Layout::qwen2_vl(0, 28, 42).is_err());
}

#[test]
fn llava15_is_one_24x24_grid() {
    let layout = Layout::llava15();
    assert_eq!(layout.tokens(), 576);
    assert_eq!(layout.grids(), &[Grid::new(0, 24, 24)]);
}

#[test]
fn llava_onevision_matches_the_models_token_order_for_hundreds_of_images() {
    let others: Vec<[usize; 2]> =
        vec![[384, 384], [384, 768], [768, 384], [768, 768], [1152, 1152]];
    let mut down_sampled = 0;
    for pinpoints in [LLAVA_ONEVISION_PINPOINTS.to_vec(), others] {
        for (width, height) in image_sizes() {
            let expected = pack_anyres(width, height, &pinpoints, 384, Some(9));
            let layout = Layout::llava_onevision(width as usize, height as usize, &pinpoints)
                .unwrap_or_else(|e| panic!("{width}x{height}: {e}"));
            assert_sources(
                &layout,
                &expected,
                &format!("{width}x{height} {pinpoints:?}"),
            );
            assert_eq!(layout.grids()[0], Grid::new(0, 27, 27));
            if let Some(crops) = layout.grids().get(1) {
                assert_eq!(
                    (crops.offset, crops.stride),
                    (729, crops.width + 1),
                    "{width}x{height}"
                );
                down_sampled += usize::from(crops.height * crops.width < 9 * 729 * 100 / 121);
            }
        }
    }
    assert!(down_sampled > 0);
}

/// Token counts `get_image_features` of a LLaVA-OneVision model gave for these images
/// (transformers 5.24, a tiny model built from its config, `LlavaOnevisionImageProcessor`;
/// 3000x2000, 4000x4000 and 777x1333 are down-sampled).
#[test]
fn llava_onevision_hand_cases_from_the_model() {
    for (width, height, tokens) in [
        (672, 672, 3699),
        (1000, 667, 5157),
        (3000, 2000, 7329),
        (100, 2000, 2349),
        (2000, 100, 2196),
        (384, 384, 1485),
        (5000, 300, 2196),
        (4000, 4000, 7371),
        (777, 1333, 7641),
        (50, 50, 1485),
    ] {
        let preset = format!("llava-onevision:{width}x{height}");
        let layout = Layout::preset(&preset, None).unwrap();
        assert_eq!(layout.tokens(), tokens, "{preset}");
    }
}

/// LLaVA-OneVision video: each frame pooled to ceil(27/2) = 14 per side, frames in order,
/// one newline token after the last.
#[test]
fn llava_onevision_video_pools_each_frame_to_14x14() {
    for frames in [1usize, 2, 8, 32] {
        let layout = Layout::preset(&format!("llava-onevision-video:{frames}"), None).unwrap();
        assert_eq!(layout.tokens(), frames * 196 + 1);
        let expected: Vec<Grid> = (0..frames).map(|f| Grid::new(f * 196, 14, 14)).collect();
        assert_eq!(layout.grids(), &expected[..]);
    }
    assert!(Layout::preset("llava-onevision-video:0", None).is_err());
}

/// Qwen2.5-VL and Qwen3-VL hand their merged tokens on in the same row-major order per frame
/// as Qwen2-VL (Qwen2.5-VL's windowed tower restores it with `reverse_indices`).
#[test]
fn qwen25_and_qwen3_vl_merge_2x2_patches_frame_by_frame() {
    for family in ["qwen2.5-vl", "qwen3-vl"] {
        for (t, h, w) in [
            (1usize, 28usize, 42usize),
            (2, 2, 2),
            (3, 16, 24),
            (4, 64, 90),
        ] {
            let preset = format!("{family}:{t}x{h}x{w}");
            let layout = Layout::preset(&preset, None).unwrap();
            assert_eq!(layout, Layout::qwen2_vl(t, h, w).unwrap(), "{preset}");
        }
        assert!(Layout::preset(&format!("{family}:1x27x42"), None).is_err());
    }
}

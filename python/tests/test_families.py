"""The families of issue 24 (Qwen2.5-VL, Qwen3-VL, LLaVA-OneVision) on their tiny models: where
each visual token comes from (images whose patches have distinct colours, decoded back from the
processor's output), the order the model feeds them in (re-computed from the model's parts,
against `layouts`, e.g. Qwen2.5-VL undoes its window permutation after the merger), the Rust
presets against `layouts` for the models' configs, Qwen3-VL's deepstack levels (used by the
model, reduced with the student's own P), and the Qwen families' 3-D positions of reduced
video frames."""
import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import LlavaOnevisionConfig
from transformers.vision_utils import get_vision_window_index

from conftest import run
from metacompress import layouts
from metacompress.models import tiny
from metacompress.models.adapters import Adapter, Video
from metacompress.models.inputs import collate, pixels_of, process_image
from metacompress.training.data import synthetic_sample
from metacompress.training.distill import Weights, answer_kl, losses, predicting
from metacompress.torch import PMeta, apply_projection


def patch_image(rows: int, columns: int, patch: int) -> Image.Image:
    """An image of `rows x columns` patches, patch `k` (row-major) of red `10 + 4k` (distinct)."""
    red = (10 + 4 * np.arange(rows * columns)).reshape(rows, columns).astype(np.uint8)
    array = np.zeros((rows * patch, columns * patch, 3), dtype=np.uint8)
    array[..., 0] = np.kron(red, np.ones((patch, patch), dtype=np.uint8))
    array[..., 1] = 128
    return Image.fromarray(array)


def decode(red: torch.Tensor) -> list[int]:
    """The patch number of each normalised red block (`count x patch x patch`), each checked to
    be one constant value; the numbers are the ranks of the values (the colours are distinct)."""
    flat = red.reshape(red.shape[0], -1)
    assert torch.allclose(flat, flat[:, :1].expand_as(flat), atol=1e-5), "a patch is not one colour"
    return torch.argsort(torch.argsort(flat[:, 0])).tolist()


def blocks_as_identity(model):
    """A copy of a Qwen model whose vision blocks add nothing (attention and MLP outputs zeroed)
    and without Qwen3-VL's learned position table: its visual token `j` is then the merger of
    input rows `4j..4j+3` placed wherever the model places it."""
    model = copy.deepcopy(model)
    visual = model.model.visual
    with torch.no_grad():
        for block in visual.blocks:
            mlp_out = getattr(block.mlp, "down_proj", None) or block.mlp.linear_fc2
            for layer in (block.attn.proj, mlp_out):
                layer.weight.zero_()
                if layer.bias is not None:
                    layer.bias.zero_()
        if hasattr(visual, "pos_embed"):
            visual.pos_embed.weight.zero_()
    return model


def qwen_merged_order(grid_rows: int, grid_columns: int, merge: int = 2) -> list[int]:
    """Patch numbers (row-major over the image) in the order of Qwen's merged tokens: merged
    cells row-major, each cell's `merge x merge` patches row-major."""
    return [(merge * r + dr) * grid_columns + merge * c + dc
            for r in range(grid_rows // merge) for c in range(grid_columns // merge)
            for dr in range(merge) for dc in range(merge)]


@pytest.mark.parametrize("name, patch, rows, columns", [
    ("tiny-qwen2.5-vl", 14, 6, 8), ("tiny-qwen2.5-vl", 14, 4, 10), ("tiny-qwen3-vl", 16, 6, 8),
    ("tiny-qwen3-vl", 16, 8, 4)])
def test_qwen_tokens_come_in_row_major_merged_order(binary, name, patch, rows, columns):
    model, processor = tiny.build(name)
    adapter = Adapter(model)
    values = process_image(processor, patch_image(rows, columns, patch))
    t, h, w = values["grid_thw"].tolist()
    assert (t, h, w) == (1, rows, columns)
    # The processor's rows: merged cells row-major, 2 x 2 patches each (the same image for both
    # temporal patches of a still image).
    pv = values["pixel_values"].reshape(t * h * w, 3, 2, patch, patch)
    assert decode(pv[:, 0, 0]) == qwen_merged_order(h, w)
    assert torch.equal(pv[:, :, 0], pv[:, :, 1])
    # Count and grids: the layouts rule, and the Rust preset for this grid_thw.
    pixels = pixels_of(values)
    features = adapter.features(pixels)
    n, grids = adapter.layout(pixels, 0)
    assert features[0].shape[0] == n == t * h * w // 4
    preset = f"{name.removeprefix('tiny-')}:{t}x{h}x{w}"
    assert json.loads(run(binary, "layout", preset, "--json")) == {"n": n, "grids": [list(g) for g in grids]}
    # Order: with the vision blocks adding nothing, token j is the merger of rows 4j..4j+3.
    plain = blocks_as_identity(model)
    visual = plain.model.visual
    out = Adapter(plain).features(pixels)
    with torch.no_grad():
        embedded = visual.patch_embed(pixels.pixel_values)
        expected = visual.merger(embedded)
        assert torch.allclose(out[0], expected, atol=1e-5)
        for k, level in enumerate(out.levels):   # Qwen3-VL's deepstack, the same order
            assert torch.allclose(level[0], visual.deepstack_merger_list[k](embedded), atol=1e-5)
    assert len(out.levels) == (2 if name == "tiny-qwen3-vl" else 0)
    if name == "tiny-qwen2.5-vl":
        # The blocks see the tokens in window order; the model restores row-major order (the
        # test would see the window order otherwise).
        window_index, _ = get_vision_window_index(pixels.image_grid_thw, 2, visual.window_size, patch)
        assert not torch.equal(window_index, torch.arange(n))
        assert not torch.allclose(expected[window_index], expected)


def onevision_case(width_patches: int, height_patches: int):
    model, processor = tiny.build("tiny-llava-onevision")
    values = process_image(processor, patch_image(height_patches, width_patches, 14))
    return model, pixels_of(values)


@pytest.mark.parametrize("columns, rows", [(8, 4), (8, 6), (4, 8), (6, 6), (3, 3)])
def test_onevision_tokens_are_the_base_tile_then_the_unpadded_crops_row_major(columns, rows):
    model, pixels = onevision_case(columns, rows)
    adapter = Adapter(model)
    side = tiny.TILE // 14
    width, height = columns * 14, rows * 14
    assert pixels.image_sizes[0].tolist() == [height, width]
    tiles = pixels.pixel_values[0]
    pin_height, pin_width = layouts._best_resolution(width, height, tiny.ONEVISION_PINPOINTS)
    tile_rows, tile_columns = pin_height // tiny.TILE, pin_width // tiny.TILE
    crops = tiles[1:1 + tile_rows * tile_columns]
    # The crops, tile after tile, row-major over the resized and padded image: stitched, they
    # are the grid of patches the model packs (decoded where the image is not padding).
    grid = crops.reshape(tile_rows, tile_columns, 3, side, 14, side, 14)
    red = grid[:, :, 0].permute(0, 2, 1, 4, 3, 5).reshape(tile_rows * side, tile_columns * side, 14, 14)
    features = adapter.features(pixels)[0]
    n, grids = adapter.layout(pixels, 0)
    assert features.shape[0] == n
    base, crop = grids
    # The model's tokens, re-computed from its parts: the tower on each tile, the projector.
    with torch.no_grad():
        hidden = model.model.vision_tower(tiles, output_hidden_states=True).hidden_states[-1]
        projected = model.model.multi_modal_projector(hidden)
    assert torch.allclose(features[:side * side], projected[0], atol=1e-5)
    stitched = projected[1:1 + tile_rows * tile_columns].reshape(tile_rows, tile_columns, side, side, -1)
    stitched = stitched.permute(0, 2, 1, 3, 4).reshape(tile_rows * side, tile_columns * side, -1)
    # Unpadding keeps the middle rows (or columns) that the image covers.
    top = (stitched.shape[0] - crop.height) // 2
    left = (stitched.shape[1] - crop.width) // 2
    kept = stitched[top:top + crop.height, left:left + crop.width]
    tokens = features[crop.offset:].reshape(crop.height, crop.stride, -1)
    newline = model.model.image_newline
    assert torch.allclose(tokens[:, -1], newline.expand(crop.height, -1), atol=0)
    assert torch.allclose(tokens[:, :-1], kept, atol=1e-5)
    if min(pin_width / width, pin_height / height) == 1:
        # Not resized: the kept patches are the image's own, row-major.
        patch_numbers = decode(red[top:top + crop.height, left:left + crop.width].reshape(-1, 14, 14))
        assert patch_numbers == list(range(rows * columns))


def test_onevision_crops_past_anyres_max_are_down_sampled_as_layouts_says():
    # 3 x 3 tiles of 4 x 4 patches: 144 crop tokens past 4 tiles' worth x 1.1: down-sampled.
    model, pixels = onevision_case(12, 12)
    features = Adapter(model).features(pixels)[0]
    n, grids = Adapter(model).layout(pixels, 0)
    assert features.shape[0] == n and [tuple(g) for g in grids] == [(0, 4, 4, 4), (16, 8, 8, 9)]
    newline = model.model.image_newline
    for row in range(8):
        assert torch.equal(features[16 + 9 * row + 8], newline.to(features.dtype))


def test_the_rust_onevision_preset_agrees_with_layouts_for_the_models_config(binary):
    """The real model's config (transformers' defaults: SigLIP 384/14, the 1x1 to 6x6 pinpoints,
    anyres_max_9) gives the adapter's layout arguments; the Rust preset agrees with them."""
    config = LlavaOnevisionConfig()
    vision = config.vision_config
    assert (vision.image_size, vision.patch_size, config.vision_aspect_ratio) == (384, 14, "anyres_max_9")
    pinpoints = json.dumps(config.image_grid_pinpoints)
    for width, height in [(640, 480), (1920, 1080), (3000, 2000), (400, 3000), (384, 384)]:
        n, grids = layouts.llava_onevision(width, height, config.image_grid_pinpoints, tile=vision.image_size,
                                           patch=vision.patch_size, max_tiles=9)
        out = json.loads(run(binary, "layout", f"llava-onevision:{width}x{height}", "--pinpoints",
                             pinpoints, "--json"))
        assert out == {"n": n, "grids": [list(g) for g in grids]}, (width, height)
    assert layouts.llava_onevision_video(8, tile=vision.image_size, patch=vision.patch_size) == \
        layouts.llava_onevision_video(8)


def test_onevision_video_layout_matches_get_video_features():
    model, _ = tiny.build("tiny-llava-onevision")
    frames = torch.randn(1, 3, 3, tiny.TILE, tiny.TILE)
    with torch.no_grad():
        out = model.model.get_video_features(frames, return_dict=True).pooler_output
    n, grids = layouts.llava_onevision_video(3, tile=tiny.TILE, patch=14)
    assert out.shape[1] == n and [tuple(g) for g in grids] == [(0, 2, 2, 2), (4, 2, 2, 2), (8, 2, 2, 2)]


# --- Qwen3-VL's deepstack ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def qwen3():
    model, processor = tiny.build("tiny-qwen3-vl")
    return Adapter(model), processor


def test_deepstack_levels_are_used_by_the_model(qwen3, seed):
    adapter, processor = qwen3
    import random
    batch = collate([synthetic_sample(adapter, processor, random.Random(seed))])
    features = adapter.features(batch.pixels)
    thw = batch.pixels.image_grid_thw
    own = adapter.logits(batch.input_ids, batch.attention_mask, features, thw)
    zeroed = adapter.logits(batch.input_ids, batch.attention_mask, features, thw,
                            levels=[[torch.zeros_like(t) for t in level] for level in features.levels])
    # (Small random deepstack mergers: a small change, far above the rounding.)
    assert (own - zeroed).abs().max() > 1e-3, f"seed {seed}"
    with pytest.raises(ValueError, match="deepstack levels"):
        adapter.logits(batch.input_ids, batch.attention_mask, list(features), thw)


def test_the_student_reads_its_deepstack_levels_reduced_with_its_own_p(qwen3, seed):
    adapter, processor = qwen3
    import random
    from metacompress.models.adapters import shorten
    batch = collate([synthetic_sample(adapter, processor, random.Random(seed))])
    pmeta = PMeta.init(adapter.width, 16, pos=(4, 4), seed=seed % 1000)
    weights = Weights(keep=0.25)
    with torch.no_grad():
        parts = losses(adapter, pmeta, batch, weights)
        features = adapter.features(batch.pixels)
        n, grids = adapter.layout(batch.pixels, 0)
        y, p = pmeta(features[0].float(), [tuple(g) for g in grids], keep=0.25)
        ids, answer = shorten(batch.input_ids[0], batch.answer[0], adapter.image_token_id, y.shape[0])
        thw = torch.tensor([adapter.reduced_grid_thw(grids, 0.25)])
        teacher = adapter.logits(batch.input_ids, batch.attention_mask, features, batch.pixels.image_grid_thw)
        t_rows = predicting(batch.answer[0])

        def pred(levels):
            student = adapter.logits(ids[None], torch.ones_like(ids)[None], [y], thw, levels=levels)
            return float(answer_kl(teacher[0][t_rows], student[0][predicting(answer)]))
        same_p = pred([[apply_projection(p, level[0].float())] for level in features.levels])
        # The levels' first m tokens instead: another student.
        m = y.shape[0]
        other = pred([[level[0][:m].float()] for level in features.levels])
    assert abs(float(parts["pred"]) - same_p) <= 1e-6 * max(1.0, same_p), f"seed {seed}"
    assert abs(other - same_p) > 1e-6, f"seed {seed}"


# --- 3-D positions of reduced video frames -------------------------------------------------------

@pytest.mark.parametrize("name", ["tiny-qwen2.5-vl", "tiny-qwen3-vl"])
def test_reduced_video_frames_keep_their_time_positions(name):
    """The reduced grid keeps the time axis: through the model's own get_rope_index each reduced
    frame takes its frame's temporal position (Qwen2.5-VL: frame x tokens_per_second x
    second_per_grid_ts; Qwen3-VL: each frame its own grid after its timestamp text)."""
    model, _ = tiny.build(name)
    adapter = Adapter(model)
    video = model.config.video_token_id
    t, h, w = 3, 8, 12
    n, grids = layouts.qwen2_vl(t, h, w)
    reduced = adapter.reduced_grid_thw(grids, 0.25)
    assert reduced == (3, 4, 6)

    def temporal(grid):
        frames, per_frame = grid[0], grid[1] * grid[2] // 4
        if name == "tiny-qwen3-vl":   # <t> <video tokens of one frame> per frame
            ids = sum(([5, 6] + [video] * per_frame for _ in range(frames)), [])
        else:
            ids = [5, 6] + [video] * (frames * per_frame)
        ids = torch.tensor([ids + [7]])
        kinds = (ids == video).int() * 2
        extra = {"second_per_grid_ts": torch.tensor([1.5])} if name == "tiny-qwen2.5-vl" else {}
        positions, _ = model.model.get_rope_index(ids, kinds, video_grid_thw=torch.tensor([grid]), **extra)
        at = (ids[0] == video).nonzero().flatten()
        time = positions[0, 0, at].reshape(frames, per_frame)
        assert bool((time == time[:, :1]).all())
        return (time[:, 0] - positions[0, 0, at[0]]).tolist()   # each frame's time after the first

    full, short = temporal((t, h, w)), temporal(reduced)
    if name == "tiny-qwen2.5-vl":
        interval = int(model.config.vision_config.tokens_per_second * 1.5)
        assert full == short == [0, interval, 2 * interval]
    else:
        # Qwen3-VL: frames are separate grids; each starts after the text before it.
        assert short[0] == 0 and full[0] == 0 and len(short) == len(full) == 3


def video_ids(name: str, model, frames: int, per_frame: int) -> torch.Tensor:
    """A sequence around a video: Qwen3-VL's frames each after its own timestamp text (as its
    processor writes them), the other models' frames in one run."""
    video, start, end = (model.config.video_token_id, model.config.vision_start_token_id,
                         model.config.vision_end_token_id)
    if name == "tiny-qwen3-vl":
        body = sum(([10 + f, 11, start] + [video] * per_frame + [end] for f in range(frames)), [])
    else:
        body = [start] + [video] * (frames * per_frame) + [end]
    return torch.tensor([[1, 20, 21] + body + [30, 31, 32, 2]])


@pytest.mark.parametrize("name", ["tiny-qwen2-vl", "tiny-qwen2.5-vl", "tiny-qwen3-vl"])
def test_the_video_path_reproduces_the_models_logits_and_reduced_frames_run(name, seed):
    """Video tokens through `mm_encoder_outputs` with the model's own positions (Qwen2.5-VL's
    time intervals, Qwen3-VL's per-frame grids) reproduce the model's forward on the video
    (1e-5); reduced, each frame's run shortened to its query grid (`reduced_grid_thw`)."""
    model, _ = tiny.build(name)
    adapter = Adapter(model)
    patch, (t, h, w) = model.config.vision_config.patch_size, (3, 4, 6)
    generator = torch.Generator().manual_seed(seed)
    video = Video(torch.randn(t * h * w, 3 * 2 * patch * patch, generator=generator),
                  torch.tensor([[t, h, w]]),
                  torch.tensor([1.5]) if name == "tiny-qwen2.5-vl" else None)
    ids = video_ids(name, model, t, h * w // 4)
    mask = torch.ones_like(ids)
    features = adapter.video_features(video)
    n, grids = layouts.qwen2_vl(t, h, w)
    assert features[0].shape[0] == n and len(features.levels) == adapter.deepstack_levels
    with torch.no_grad():
        ours = adapter.logits(ids, mask, features, video.video_grid_thw, video=True,
                              second_per_grid_ts=video.second_per_grid_ts)
    own = adapter.model_video_logits(ids, mask, video)
    assert (ours - own).abs().max() <= 1e-5, f"{name} seed {seed}"
    # Reduced: the same P for the deepstack levels; the time axis kept.
    pmeta = PMeta.init(adapter.width, 16, pos=(4, 4), seed=seed % 1000)
    with torch.no_grad():
        y, p = pmeta(features[0], [tuple(g) for g in grids], keep=0.25)
        levels = [[apply_projection(p, level[0])] for level in features.levels]
        reduced = adapter.reduced_grid_thw(grids, 0.25)
        assert reduced[0] == t and y.shape[0] == t * reduced[1] * reduced[2] // 4
        short = video_ids(name, model, t, reduced[1] * reduced[2] // 4)
        logits = adapter.logits(short, torch.ones_like(short), [y], torch.tensor([reduced]), levels=levels,
                                video=True, second_per_grid_ts=video.second_per_grid_ts)
    assert logits.shape[1] == short.shape[1] and bool(torch.isfinite(logits).all())

"""Where the 2-D grids lie among an image's tokens (SPEC section 3), and the layouts of real
models' visual tokens, computed as the models do (the same arithmetic as the Rust runtime's
`--layout` presets; `tests/test_layouts.py` checks the two against each other).

A grid is `(offset, h, w)` or `(offset, h, w, stride)`: token `(r, c)` at
`offset + r * stride + c`. Tokens in no grid are loose (keys, but no query).
"""
from __future__ import annotations

import math
import operator
from typing import NamedTuple, Sequence

# LLaVA-NeXT's default image_grid_pinpoints, [height, width] pairs.
LLAVA_NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


class Grid(NamedTuple):
    offset: int
    height: int
    width: int
    stride: int

    @classmethod
    def of(cls, grid: Sequence[int]) -> "Grid":
        """A grid from `(offset, h, w)` or `(offset, h, w, stride)` of integers (Python, numpy
        or 0-d torch integers; a float or a bool is refused rather than truncated)."""
        if isinstance(grid, (str, bytes)) or not hasattr(grid, "__len__"):
            raise TypeError(f"grid {grid!r}: expected (offset, h, w) or (offset, h, w, stride)")
        if len(grid) not in (3, 4):
            raise ValueError(f"grid {list(grid)!r}: expected (offset, h, w) or (offset, h, w, stride)")
        offset, height, width = (_integer(v, grid) for v in grid[:3])
        stride = _integer(grid[3], grid) if len(grid) == 4 else width
        return cls(offset, height, width, stride)

    def check(self) -> "Grid":
        """The grid itself, refused when empty, at a negative offset, or with `stride < w`."""
        if self.height < 1 or self.width < 1 or self.offset < 0:
            raise ValueError(f"grid {tuple(self)} is empty; expected h and w of at least 1 and "
                             "an offset of at least 0")
        if self.stride < self.width:
            raise ValueError(f"grid {tuple(self)}: stride {self.stride} is below the width {self.width}")
        return self

    def tokens(self) -> list[int]:
        """The grid's tokens, row by row."""
        return [self.offset + r * self.stride + c for r in range(self.height) for c in range(self.width)]

    def end(self) -> int:
        return self.offset + (self.height - 1) * self.stride + self.width


def _integer(value, grid) -> int:
    if not isinstance(value, bool):
        try:
            return operator.index(value)
        except TypeError:
            pass
    raise TypeError(f"grid {tuple(grid)!r}: {value!r} is not an integer; expected integers "
                    "(offset, h, w) or (offset, h, w, stride)")


def grids_of(grids: Sequence[Sequence[int]]) -> list[Grid]:
    """The grids as `Grid`s, each checked on its own (see `Grid.check`); at least one."""
    if isinstance(grids, (str, bytes)) or not hasattr(grids, "__iter__"):
        raise TypeError(f"grids {grids!r}: expected a list of (offset, h, w) or "
                        "(offset, h, w, stride) tuples")
    grids = [Grid.of(g).check() for g in grids]
    if not grids:
        raise ValueError("the layout has no grid; expected at least one")
    return grids


def check_layout(n: int, grids: Sequence[Sequence[int]]) -> list[Grid]:
    """The grids, checked as the runtime checks them: non-empty, `stride >= w`, inside
    `0..n`, no token in two grids."""
    grids = grids_of(grids)
    owner = {}
    for grid in grids:
        if grid.end() > n:
            raise ValueError(f"grid {tuple(grid)} ends past the last token; expected it inside 0..{n}")
        for token in grid.tokens():
            if token in owner:
                raise ValueError(f"grids {tuple(owner[token])} and {tuple(grid)} overlap at token {token}")
            owner[token] = grid
    return grids


def round_half_away(x: float) -> int:
    """`round` of SPEC section 4, step 2 (half away from zero), exact for doubles."""
    lower = math.floor(x)
    return int(lower + 1 if x - lower >= 0.5 else lower)


def query_shape(height: int, width: int, keep: float) -> tuple[int, int]:
    """`hq x wq` for an `h x w` grid at keep `k` (SPEC section 4, step 2)."""
    scale = lambda side, factor: min(max(round_half_away(side * factor), 1), side)
    if height > 1 and width > 1:
        return scale(height, math.sqrt(keep)), scale(width, math.sqrt(keep))
    if height == 1:
        return 1, scale(width, keep)
    return scale(height, keep), 1


def llava15(side: int = 24) -> tuple[int, list[Grid]]:
    """LLaVA-1.5: one `side x side` grid (24 for CLIP ViT-L/14-336)."""
    return side * side, [Grid(0, side, side, side)]


def _best_resolution(width: int, height: int, pinpoints) -> tuple[int, int]:
    """transformers' `select_best_resolution`: (height, width) of the chosen pinpoint."""
    best, most_effective, least_wasted = None, 0, float("inf")
    for pin_height, pin_width in pinpoints:
        scale = min(pin_width / width, pin_height / height)
        scaled_width, scaled_height = int(width * scale), int(height * scale)
        effective = min(scaled_width * scaled_height, width * height)
        wasted = pin_width * pin_height - effective
        if effective > most_effective or (effective == most_effective and wasted < least_wasted):
            best, most_effective, least_wasted = (pin_height, pin_width), effective, wasted
    return best


def llava_next(width: int, height: int, pinpoints=None, tile: int = 336, patch: int = 14,
               max_tiles: int | None = None):
    """LLaVA-NeXT (anyres) for an image of `width x height` pixels, in the order
    `pack_image_features` produces: the base `side x side` grid, then the crops unpadded to the
    image's aspect ratio, `H' x W'` with a newline token after each row (stride `W' + 1`).
    `tile` and `patch` are the vision tower's image and patch sizes; `max_tiles` is
    LLaVA-OneVision's `anyres_max_N` (the crop grid down-sampled past N tiles' worth x 1.1).
    Returns `(n, grids)`."""
    if width < 1 or height < 1:
        raise ValueError(f"llava-next image {width}x{height}: expected at least 1x1 pixels")
    pinpoints = pinpoints if pinpoints is not None else LLAVA_NEXT_PINPOINTS
    side = tile // patch
    best_height, best_width = _best_resolution(width, height, pinpoints)
    rows, columns = best_height // tile * side, best_width // tile * side
    # unpad_image(tensor, original_size=(height, width))
    if width / height > columns / rows:
        new_rows = int(round(height * (columns / width), 7))
        padding = (rows - new_rows) // 2
        rows -= 2 * padding
    else:
        new_columns = int(round(width * (rows / height), 7))
        padding = (columns - new_columns) // 2
        columns -= 2 * padding
    if max_tiles is not None:
        ratio = math.sqrt(rows * columns / (max_tiles * side * side))
        if ratio > 1.1:
            rows, columns = int(rows // ratio), int(columns // ratio)
    grids = [Grid(0, side, side, side)]
    if rows > 0 and columns > 0:
        grids.append(Grid(side * side, rows, columns, columns + 1))
    return side * side + rows * (columns + 1), grids


def qwen2_vl(t: int, h: int, w: int, merge: int = 2) -> tuple[int, list[Grid]]:
    """Qwen2-VL for `grid_thw = (t, h, w)`: one `h/merge x w/merge` grid per temporal index."""
    if t < 1 or h < merge or w < merge or h % merge or w % merge:
        raise ValueError(f"qwen2-vl grid_thw {t}x{h}x{w}: expected t >= 1 and h, w multiples of {merge}")
    rows, columns = h // merge, w // merge
    per_frame = rows * columns
    return t * per_frame, [Grid(frame * per_frame, rows, columns, columns) for frame in range(t)]


LLAVA_ONEVISION_PINPOINTS = [[384 * i, 384 * j] for i in range(1, 7) for j in range(1, 7)]


def llava_onevision(width: int, height: int, pinpoints=None, tile: int = 384, patch: int = 14,
                    max_tiles: int = 9) -> tuple[int, list[Grid]]:
    """LLaVA-OneVision (by default SigLIP tiles of 384 pixels, 27 x 27 patches, and
    `anyres_max_9`): the base `side x side` grid, then the unpadded crops, down-sampled as
    `pack_image_features` does past `max_tiles` tiles' worth (x 1.1), with a newline token
    after each row. `tile`, `patch` and `max_tiles` are the model's `vision_config.image_size`,
    `vision_config.patch_size` and `vision_aspect_ratio`'s N. Returns `(n, grids)`."""
    pinpoints = pinpoints if pinpoints is not None else LLAVA_ONEVISION_PINPOINTS
    return llava_next(width, height, pinpoints, tile=tile, patch=patch, max_tiles=max_tiles)


def llava_onevision_video(frames: int, tile: int = 384, patch: int = 14) -> tuple[int, list[Grid]]:
    """LLaVA-OneVision video: each frame's `side x side` patches (27 for 384 / 14) pooled to
    `ceil(side / 2)` a side (14 x 14), one newline token after the last frame."""
    if frames < 1:
        raise ValueError(f"llava-onevision-video frames = {frames}: expected at least 1")
    pooled = -(-(tile // patch) // 2)
    per_frame = pooled * pooled
    return frames * per_frame + 1, [Grid(f * per_frame, pooled, pooled, pooled) for f in range(frames)]


# Qwen2.5-VL restores its windows' row-major order before the merger, and Qwen3-VL merges 2x2
# patches the same way: their layouts are Qwen2-VL's for the same grid_thw.
qwen2_5_vl = qwen2_vl
qwen3_vl = qwen2_vl

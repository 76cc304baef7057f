"""Adapters: where LLaVA-1.5, LLaVA-NeXT and Qwen2-VL (Hugging Face transformers) make their
visual tokens, how those tokens are laid out as SPEC grids, and how a sequence is run with the
tokens replaced by `Y = P X`, through the models' public interfaces only
(`get_image_features` and `mm_encoder_outputs`; nothing is patched).

The reduced tokens replace the image's placeholder run, shortened from `n` to `m` tokens; the
attention mask follows. Positions:
- LLaVA-1.5 and LLaVA-NeXT: 1-D positions, consecutive over the shortened sequence (what the
  model does with any sequence).
- Qwen2-VL: the model's own 3-D rotary positions for an image whose merged grid is the query
  grid: `image_grid_thw = (t, merge * hq, merge * wq)` for `t` frames of `hq x wq` queries
  (`reduced_grid_thw`). Inference with the Rust runtime must use the same rule.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from . import layouts
from .layouts import query_shape

FAMILIES = ("llava", "llava_next", "qwen2_vl")


@dataclass
class Pixels:
    """What the image processor made for a batch of images (one image per sample)."""
    pixel_values: torch.Tensor
    image_sizes: torch.Tensor | None = None      # LLaVA-NeXT: (b, 2) as (height, width)
    image_grid_thw: torch.Tensor | None = None   # Qwen2-VL: (b, 3)

    def to(self, device):
        move = lambda t: None if t is None else t.to(device)
        return Pixels(move(self.pixel_values), move(self.image_sizes), move(self.image_grid_thw))


class Adapter:
    """A frozen vision-language model seen from P_meta: visual tokens in, logits out."""

    def __init__(self, model):
        family = model.config.model_type
        if family not in FAMILIES:
            raise ValueError(f"model type {family!r} is not supported; expected one of {FAMILIES}")
        self.model = model
        self.family = family
        self.image_token_id = model.config.image_token_id
        model.requires_grad_(False)
        model.eval()

    @property
    def width(self) -> int:
        """`d`: the width of the tokens the language model reads."""
        return self.model.config.text_config.hidden_size

    # --- visual tokens ---------------------------------------------------------------------

    @torch.no_grad()
    def features(self, pixels: Pixels) -> list[torch.Tensor]:
        """Each image's visual tokens (`n_i x d`), in the order the model feeds them."""
        inner = self.model.model
        if self.family == "llava":
            out = inner.get_image_features(pixel_values=pixels.pixel_values, return_dict=True)
        elif self.family == "llava_next":
            out = inner.get_image_features(pixel_values=pixels.pixel_values,
                                           image_sizes=pixels.image_sizes, return_dict=True)
        else:
            out = inner.get_image_features(pixels.pixel_values, pixels.image_grid_thw, return_dict=True)
        return list(out.pooler_output)

    def layout(self, pixels: Pixels, index: int) -> tuple[int, list[layouts.Grid]]:
        """`(n, grids)` of image `index` (SPEC section 3), computed as the model lays it out."""
        vision = self.model.config.vision_config
        if self.family == "llava":
            return layouts.llava15(vision.image_size // vision.patch_size)
        if self.family == "llava_next":
            height, width = (int(v) for v in pixels.image_sizes[index])
            return layouts.llava_next(width, height, self.model.config.image_grid_pinpoints,
                                      tile=vision.image_size, patch=vision.patch_size)
        t, h, w = (int(v) for v in pixels.image_grid_thw[index])
        return layouts.qwen2_vl(t, h, w, merge=vision.spatial_merge_size)

    def reduced_grid_thw(self, grids, keep: float) -> tuple[int, int, int] | None:
        """Qwen2-VL: the `image_grid_thw` whose merged grid is the query grid (one per frame);
        `None` for the other families."""
        if self.family != "qwen2_vl":
            return None
        merge = self.model.config.vision_config.spatial_merge_size
        shapes = {query_shape(g.height, g.width, keep) for g in grids}
        if len(shapes) != 1:
            raise ValueError("qwen2-vl frames of different query grids; expected one shape")
        hq, wq = shapes.pop()
        return len(grids), merge * hq, merge * wq

    # --- running a sequence ----------------------------------------------------------------

    def logits(self, input_ids, attention_mask, tokens: list[torch.Tensor],
               grid_thw: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of sequences whose image placeholder runs hold `tokens` (one tensor per
        sample, as many rows as its run). `grid_thw`: Qwen2-VL's `image_grid_thw` for them."""
        dtype = self.model.get_input_embeddings().weight.dtype
        images = {"image": BaseModelOutputWithPooling(pooler_output=[t.to(dtype) for t in tokens])}
        extra = {}
        if self.family == "qwen2_vl":
            extra = dict(image_grid_thw=grid_thw,
                         mm_token_type_ids=(input_ids == self.image_token_id).int())
        out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                         mm_encoder_outputs=images, use_cache=False, **extra)
        return out.logits

    @torch.no_grad()
    def model_logits(self, input_ids, attention_mask, pixels: Pixels) -> torch.Tensor:
        """The model's own forward on pixels (for checking the adapter)."""
        extra = {}
        if self.family == "llava_next":
            extra = dict(image_sizes=pixels.image_sizes)
        elif self.family == "qwen2_vl":
            extra = dict(image_grid_thw=pixels.image_grid_thw,
                         mm_token_type_ids=(input_ids == self.image_token_id).int())
        return self.model(input_ids=input_ids, attention_mask=attention_mask,
                          pixel_values=pixels.pixel_values, use_cache=False, **extra).logits


def shorten(input_ids: torch.Tensor, answer: torch.Tensor, image_token_id: int, m: int):
    """One sample's `input_ids` and answer mask with its image placeholder run cut to `m`
    tokens (the run must be contiguous)."""
    where = (input_ids == image_token_id).nonzero().flatten()
    if where.numel() == 0:
        raise ValueError("the sample holds no image placeholder token")
    first, last = int(where[0]), int(where[-1]) + 1
    if last - first != where.numel():
        raise ValueError("the image placeholder tokens are not one contiguous run")
    run = input_ids.new_full((m,), image_token_id)
    ids = torch.cat([input_ids[:first], run, input_ids[last:]])
    mask = torch.cat([answer[:first], answer.new_zeros(m), answer[last:]])
    return ids, mask

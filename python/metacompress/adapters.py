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

    @torch.no_grad()
    def features_and_attention(self, pixels: Pixels) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Each image's visual tokens (as `features`) and, from the same pass of the vision
        tower, each token's [CLS] attention (`n_i`, float32, non-negative): what VisionZip and
        PruMerge rank tokens by (SPEC section 5).

        The attention is the [CLS] query's row of the vision tower's self-attention, averaged
        over heads, in the layer whose output the model takes as its features
        (`vision_feature_layer`; the mean over the layers where it lists several), read at each
        patch; it is laid out in the language model's token order by the model's own packing
        (LLaVA-NeXT: `pack_image_features` on the attention as a one-channel feature, so the
        base tile's patches come first, then the crops' unpadded grid, and each row's newline
        token gets 0). With `vision_feature_select_strategy="full"` the [CLS] token itself gets
        its attention to itself. The tower runs with eager attention (the implementation
        that hands its weights back; the same math as SDPA up to rounding): it is switched
        on the model the first time. Qwen2-VL's tower has no [CLS] token: refused."""
        if self.family == "qwen2_vl":
            raise ValueError("qwen2-vl's vision tower has no [CLS] token, so no [CLS] attention")
        if self.model.config.vision_config._attn_implementation != "eager":
            self.model.set_attn_implementation({"vision_config": "eager"})
        inner = self.model.model
        extra = dict(image_sizes=pixels.image_sizes) if self.family == "llava_next" else {}
        out = inner.get_image_features(pixel_values=pixels.pixel_values, output_attentions=True,
                                       return_dict=True, **extra)
        layers = self.model.config.vision_feature_layer
        layers = [layers] if isinstance(layers, int) else list(layers)
        if 0 in layers:
            raise ValueError("vision_feature_layer 0 is the embeddings, which no attention made")
        # hidden_states[k] is the output of layer k - 1 (k > 0), of layer L + k (k < 0).
        rows = [out.attentions[k - 1 if k > 0 else k][:, :, 0].float().mean(1) for k in layers]
        cls = torch.stack(rows).mean(0)                           # (tiles, 1 + patches)
        if self.model.config.vision_feature_select_strategy == "default":
            cls = cls[:, 1:]
        features = list(out.pooler_output)
        if self.family == "llava":
            attention = list(cls)
        else:
            from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches
            config = self.model.config
            tiles = [image_size_to_num_patches(size, config.image_grid_pinpoints,
                                               config.vision_config.image_size)
                     for size in pixels.image_sizes]
            packed, _ = inner.pack_image_features(
                [tile[..., None] for tile in torch.split(cls, tiles)], pixels.image_sizes,
                vision_feature_select_strategy=config.vision_feature_select_strategy,
                image_newline=cls.new_zeros(1))
            attention = [image[:, 0] for image in packed]
        for index, (image, weights) in enumerate(zip(features, attention)):
            if image.shape[0] != weights.shape[0]:
                raise ValueError(f"image {index}: {image.shape[0]} tokens but {weights.shape[0]} "
                                 "attention weights")
        return features, attention

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

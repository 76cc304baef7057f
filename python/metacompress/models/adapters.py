"""Adapters: where LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision, Qwen2-VL, Qwen2.5-VL and Qwen3-VL
(Hugging Face transformers) make their visual tokens, how those tokens are laid out as SPEC
grids, and how a sequence is run with the tokens replaced by `Y = P X`, through the models'
public interfaces only (`get_image_features` and `mm_encoder_outputs`; nothing is patched).

The reduced tokens replace the image's placeholder run, shortened from `n` to `m` tokens; the
attention mask follows. Positions:
- LLaVA-1.5, LLaVA-NeXT and LLaVA-OneVision: 1-D positions, consecutive over the shortened
  sequence (what the model does with any sequence).
- Qwen2-VL, Qwen2.5-VL, Qwen3-VL: the model's own 3-D rotary positions (`get_rope_index`) for
  an image whose merged grid is the query grid: `image_grid_thw = (t, merge * hq, merge * wq)`
  for `t` frames of `hq x wq` queries (`reduced_grid_thw`). The time axis is kept, so the
  frames of a video keep their time positions (Qwen2.5-VL's `t * tokens_per_second *
  second_per_grid_ts`; Qwen3-VL splits a video into frames of `t = 1`, separated by timestamps
  in the text). Inference with the Rust runtime must use the same rule. Videos: `Video`,
  `video_features`, `logits(..., video=True)`.

Qwen3-VL's vision tower also returns deepstack features: for each of a few intermediate vision
layers, `n` more tokens (the main tokens' layout) that the language model adds to its first
layers' hidden states at the image's positions. A reduction reduces every level with the same
`P`: `Y_k = P X_k` (`Features.levels`, `logits(..., levels=...)`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

from .. import layouts
from ..layouts import query_shape

FAMILIES = ("llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl")
# The families with Qwen2-VL's `image_grid_thw` and 3-D rotary positions.
QWEN = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
NO_CLS = QWEN + ("llava_onevision",)
"""The families whose vision tower has no [CLS] token (Qwen's towers, LLaVA-OneVision's SigLIP):
no [CLS] attention for VisionZip and PruMerge to rank by."""
# The families with anyres tiling (`image_sizes`).
ANYRES = ("llava_next", "llava_onevision")


@dataclass
class Pixels:
    """What the image processor made for a batch of images (one image per sample)."""
    pixel_values: torch.Tensor
    image_sizes: torch.Tensor | None = None      # LLaVA-NeXT, -OneVision: (b, 2) as (height, width)
    image_grid_thw: torch.Tensor | None = None   # Qwen2-VL, 2.5-VL, 3-VL: (b, 3)

    def to(self, device):
        move = lambda t: None if t is None else t.to(device)
        return Pixels(move(self.pixel_values), move(self.image_sizes), move(self.image_grid_thw))


@dataclass
class Video:
    """What a Qwen video processor made for a batch of videos (Qwen2-VL, 2.5-VL, 3-VL)."""
    pixel_values_videos: torch.Tensor
    video_grid_thw: torch.Tensor                    # (b, 3)
    second_per_grid_ts: torch.Tensor | None = None  # Qwen2.5-VL: (b,), seconds per temporal patch


class Features(list):
    """Each image's visual tokens (`n_i x d`), in the order the model feeds them: a list, one
    tensor per image. `levels`: Qwen3-VL's deepstack features, `levels[k][i]` the tokens of
    level `k` for image `i` (`n_i x d`, laid out as the image's main tokens); empty for the
    other families."""

    def __init__(self, tokens, levels=()):
        super().__init__(tokens)
        self.levels = [list(level) for level in levels]


def _anyres_max(aspect: str) -> int:
    """`N` of LLaVA-OneVision's `vision_aspect_ratio = "anyres_max_N"`."""
    match = re.fullmatch(r"anyres_max_(\d+)", aspect or "")
    if match is None:
        raise ValueError(f"vision_aspect_ratio {aspect!r}: expected anyres_max_N")
    return int(match.group(1))


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

    @property
    def deepstack_levels(self) -> int:
        """How many deepstack levels the model adds to its first layers (Qwen3-VL), else 0."""
        if self.family != "qwen3_vl":
            return 0
        return len(self.model.config.vision_config.deepstack_visual_indexes)

    @torch.no_grad()
    def features(self, pixels: Pixels) -> Features:
        """Each image's visual tokens (`n_i x d`), in the order the model feeds them, and for
        Qwen3-VL its deepstack levels (`Features.levels`)."""
        inner = self.model.model
        if self.family == "llava":
            out = inner.get_image_features(pixel_values=pixels.pixel_values, return_dict=True)
        elif self.family in ANYRES:
            out = inner.get_image_features(pixel_values=pixels.pixel_values,
                                           image_sizes=pixels.image_sizes, return_dict=True)
        else:
            out = inner.get_image_features(pixels.pixel_values, pixels.image_grid_thw, return_dict=True)
        levels = out.deepstack_features if self.family == "qwen3_vl" else ()
        return Features(out.pooler_output, levels)

    @torch.no_grad()
    def video_features(self, video: Video) -> Features:
        """The Qwen families: each video's visual tokens (`t h w / merge^2 x d`, frame after
        frame, each frame's merged grid row-major; the layout of an image of the same
        `grid_thw`), and for Qwen3-VL its deepstack levels."""
        if self.family not in QWEN:
            raise ValueError(f"{self.family}: videos are read for the Qwen families only")
        out = self.model.model.get_video_features(video.pixel_values_videos, video.video_grid_thw,
                                                  return_dict=True)
        levels = out.deepstack_features if self.family == "qwen3_vl" else ()
        return Features(out.pooler_output, levels)

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
        if self.family in NO_CLS:
            raise ValueError(f"{self.family}'s vision tower has no [CLS] token, so no [CLS] "
                             "attention")
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
        if self.family in ANYRES:
            height, width = (int(v) for v in pixels.image_sizes[index])
            if self.family == "llava_onevision":
                return layouts.llava_onevision(width, height, self.model.config.image_grid_pinpoints,
                                               tile=vision.image_size, patch=vision.patch_size,
                                               max_tiles=_anyres_max(self.model.config.vision_aspect_ratio))
            return layouts.llava_next(width, height, self.model.config.image_grid_pinpoints,
                                      tile=vision.image_size, patch=vision.patch_size)
        t, h, w = (int(v) for v in pixels.image_grid_thw[index])
        return layouts.qwen2_vl(t, h, w, merge=vision.spatial_merge_size)

    def reduced_grid_thw(self, grids, keep: float) -> tuple[int, int, int] | None:
        """Qwen2-VL, 2.5-VL, 3-VL: the `image_grid_thw` whose merged grid is the query grid
        (one per frame); `None` for the other families."""
        if self.family not in QWEN:
            return None
        merge = self.model.config.vision_config.spatial_merge_size
        shapes = {query_shape(g.height, g.width, keep) for g in grids}
        if len(shapes) != 1:
            raise ValueError(f"{self.family} frames of different query grids; expected one shape")
        hq, wq = shapes.pop()
        return len(grids), merge * hq, merge * wq

    # --- running a sequence ----------------------------------------------------------------

    def logits(self, input_ids, attention_mask, tokens: list[torch.Tensor],
               grid_thw: torch.Tensor | None = None, levels=None, video: bool = False,
               second_per_grid_ts: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of sequences whose image placeholder runs hold `tokens` (one tensor per
        sample, as many rows as its run). `grid_thw`: the Qwen families' `image_grid_thw` for
        them. `levels`: Qwen3-VL's deepstack levels for them (`levels[k][i]`, as many rows as
        `tokens[i]`); by default `tokens.levels` when `tokens` is `Features`. `video` (the
        Qwen families): the tokens fill the video placeholder runs instead, `grid_thw` is
        `video_grid_thw` and `second_per_grid_ts` Qwen2.5-VL's seconds per temporal patch."""
        if video and self.family not in QWEN:
            raise ValueError(f"{self.family}: videos are read for the Qwen families only")
        dtype = self.model.get_input_embeddings().weight.dtype
        if levels is None:
            levels = getattr(tokens, "levels", [])
        levels = list(levels)
        if len(levels) != self.deepstack_levels:
            raise ValueError(f"{len(levels)} deepstack levels given; {self.family} takes "
                             f"{self.deepstack_levels}")
        for k, level in enumerate(levels):
            if [tuple(t.shape) for t in level] != [tuple(t.shape) for t in tokens]:
                raise ValueError(f"deepstack level {k} has shapes {[tuple(t.shape) for t in level]}; "
                                 f"expected the tokens' {[tuple(t.shape) for t in tokens]}")
        pooled = [t.to(dtype) for t in tokens]
        if self.family == "qwen3_vl":
            encoded = BaseModelOutputWithDeepstackFeatures(
                pooler_output=pooled, deepstack_features=[[t.to(dtype) for t in level] for level in levels])
        else:
            encoded = BaseModelOutputWithPooling(pooler_output=pooled)
        extra = {}
        if self.family in QWEN:
            extra = self._qwen_inputs(input_ids, grid_thw, video, second_per_grid_ts)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                         mm_encoder_outputs={"video" if video else "image": encoded}, use_cache=False,
                         **extra)
        return out.logits

    def _qwen_inputs(self, input_ids, grid_thw, video: bool, second_per_grid_ts=None) -> dict:
        """What the Qwen families need for their 3-D positions (`get_rope_index`): the grids
        and the token types (text 0, image 1, video 2)."""
        if not video:
            return dict(image_grid_thw=grid_thw, mm_token_type_ids=(input_ids == self.image_token_id).int())
        extra = dict(video_grid_thw=grid_thw,
                     mm_token_type_ids=2 * (input_ids == self.model.config.video_token_id).int())
        if self.family == "qwen2_5_vl" and second_per_grid_ts is not None:
            extra["second_per_grid_ts"] = second_per_grid_ts
        return extra

    @torch.no_grad()
    def model_logits(self, input_ids, attention_mask, pixels: Pixels) -> torch.Tensor:
        """The model's own forward on pixels (for checking the adapter)."""
        extra = {}
        if self.family in ANYRES:
            extra = dict(image_sizes=pixels.image_sizes)
        elif self.family in QWEN:
            extra = self._qwen_inputs(input_ids, pixels.image_grid_thw, video=False)
        return self.model(input_ids=input_ids, attention_mask=attention_mask,
                          pixel_values=pixels.pixel_values, use_cache=False, **extra).logits

    @torch.no_grad()
    def model_video_logits(self, input_ids, attention_mask, video: Video) -> torch.Tensor:
        """The model's own forward on a video (the Qwen families; for checking the adapter)."""
        extra = self._qwen_inputs(input_ids, video.video_grid_thw, True, video.second_per_grid_ts)
        return self.model(input_ids=input_ids, attention_mask=attention_mask,
                          pixel_values_videos=video.pixel_values_videos, use_cache=False, **extra).logits


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

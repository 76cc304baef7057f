"""Generation with reduced visual tokens: a Hugging Face vision-language model (LLaVA-1.5,
LLaVA-NeXT, LLaVA-OneVision, Qwen2-VL, Qwen2.5-VL, Qwen3-VL) whose images reach the language
model as `m` tokens `Y = P X` made by the native runtime (any method), through the models'
public interfaces only (the adapters' rule: the image's placeholder run shortened to `m`
tokens, the tokens handed over as `mm_encoder_outputs`; the Qwen models' positions are those
of an image whose merged grid is the query grid; Qwen3-VL's deepstack levels are reduced with
the same `P`, `Y_k = P X_k`). Generation is the model's own `generate`, with its KV cache.

    import metacompress as mc
    from metacompress.hf import ReducedModel

    reduced = ReducedModel(model, mc.Compressor("pmeta.safetensors"), keep=0.1)
    inputs = processor(images=[image], text=[prompt], return_tensors="pt")
    out = reduced.generate(**inputs, max_new_tokens=32)       # the vision tower runs here
    images = out.images                                       # the reduced tokens, kept
    follow_up = processor(images=[image], text=[prompt_2], return_tensors="pt")
    reduced.generate(**follow_up, images=images, max_new_tokens=32)  # no vision tower again

`method="full"` hands the model its own tokens (no reduction): the model's own generation.
Methods "visionzip" and "prumerge" rank tokens by the vision tower's [CLS] attention, read
in the same pass as the features (`Adapter.features_and_attention`; LLaVA-1.5 and LLaVA-NeXT:
Qwen2-VL's tower has no [CLS] token).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

from .adapters import NO_CLS, QWEN, Adapter, Pixels
from ..runtime import Compressor, UsageError

ATTENTION = ("visionzip", "prumerge")
"""The methods that rank tokens by the vision tower's [CLS] attention."""


@dataclass
class Images:
    """The reduced tokens of a prompt's images, in order: what later turns reuse."""

    tokens: list[torch.Tensor]
    """One `(m_i, d)` tensor per image, in the language model's dtype."""
    grid_thw: torch.Tensor | None
    """The Qwen models: each image's `image_grid_thw` for its reduced tokens (`(t, 2 hq, 2 wq)`)."""
    levels: list[list[torch.Tensor]] = field(default_factory=list)
    """Qwen3-VL: the reduced deepstack levels, `levels[k][i]` (`(m_i, d)`, the same `P`)."""


@dataclass
class Generated:
    """`sequences` (the prompt as the model read it, placeholder runs shortened, then the
    new tokens), `new_tokens` (the new tokens alone) and the `images` to reuse."""

    sequences: torch.Tensor
    new_tokens: torch.Tensor
    images: Images


class ReducedModel:
    """A model plus a compressor: `generate` with each image reduced to `m` tokens.

    `compressor`: a `metacompress.Compressor` (weights for method "metacompress"; none for
    the others; None with method "full"). `keep`, `method`, `scope`, `seed`: as
    `Compressor.compress` takes them. Methods "visionzip" and "prumerge" (`ATTENTION`) rank
    tokens by the vision tower's [CLS] attention: LLaVA-1.5 and LLaVA-NeXT only (the Qwen
    towers and LLaVA-OneVision's SigLIP have no [CLS] token: refused).
    """

    def __init__(self, model, compressor: Compressor | None = None, keep: float = 0.1,
                 method: str = "metacompress", scope: str = "image", seed: int = 0):
        if method in ATTENTION and model.config.model_type in NO_CLS:
            raise UsageError(f"method {method} ranks tokens by the vision tower's [CLS] attention; "
                             f"{model.config.model_type}'s tower has no [CLS] token")
        if method != "full" and compressor is None:
            raise UsageError(f"method {method} needs a metacompress.Compressor")
        self.adapter = Adapter(model)
        self.model = model
        self.compressor = compressor
        self.keep, self.method, self.scope, self.seed = keep, method, scope, seed

    @property
    def needs_attention(self) -> bool:
        """Whether the method reads the vision tower's [CLS] attention."""
        return self.method in ATTENTION

    @torch.no_grad()
    def reduce(self, pixel_values, image_sizes=None, image_grid_thw=None) -> Images:
        """Runs the vision tower on the images and reduces each one's tokens."""
        pixels = Pixels(pixel_values, image_sizes, image_grid_thw)
        if self.needs_attention:
            features, attention = self.adapter.features_and_attention(pixels)
        else:
            features, attention = self.adapter.features(pixels), None
        return self.reduce_features(pixels, features, attention)

    @torch.no_grad()
    def reduce_features(self, pixels: Pixels, features: list[torch.Tensor],
                        attention: list[torch.Tensor] | None = None) -> Images:
        """Reduces visual tokens the vision tower already made (`Adapter.features`, or
        `Adapter.features_and_attention` with their [CLS] `attention` for VisionZip and
        PruMerge): one call of the runtime per image. Several methods can share one pass of
        the tower this way."""
        if self.needs_attention and attention is None:
            raise UsageError(f"method {self.method} needs the [CLS] attention "
                             "(Adapter.features_and_attention)")
        dtype = self.model.get_input_embeddings().weight.dtype
        tokens, shapes = [], []
        levels_in = getattr(features, "levels", [])
        levels = [[] for _ in levels_in]
        for index, image in enumerate(features):
            n, grids = self.adapter.layout(pixels, index)
            if image.shape[0] != n:
                raise UsageError(f"image {index} has {image.shape[0]} tokens; its layout says {n}")
            if self.method == "full":
                tokens.append(image.to(dtype))
                for reduced, level in zip(levels, levels_in):
                    reduced.append(level[index].to(dtype))
                shapes.append(None)
                continue
            # Qwen3-VL's deepstack levels: reduced by the runtime with the same P (P X_k).
            weights = attention[index] if self.needs_attention else None
            result, reduced_levels = self.compressor.compress_sharing(
                image.detach().cpu().contiguous(),
                [level[index].detach().cpu().contiguous() for level in levels_in],
                grids=[tuple(g) for g in grids], keep=self.keep, scope=self.scope,
                method=self.method, seed=self.seed, attention=weights)
            tokens.append(result.tokens.to(device=image.device, dtype=dtype))
            for reduced, level in zip(levels, reduced_levels):
                reduced.append(level.to(device=image.device, dtype=dtype))
            shapes.append((len(grids), result.queries))
        return Images(tokens, self._grid_thw(shapes, pixels.image_grid_thw), levels)

    def _grid_thw(self, shapes, image_grid_thw):
        """The Qwen models' `image_grid_thw` of the reduced images (the model's own without
        reduction); None for the other families."""
        if self.adapter.family not in QWEN:
            return None
        if self.method == "full":
            return image_grid_thw
        merge = self.model.config.vision_config.spatial_merge_size
        rows = []
        for frames, queries in shapes:
            if len(set(queries)) != 1:
                raise UsageError(f"{self.adapter.family} frames of different query grids; "
                                 "expected one shape")
            hq, wq = queries[0]
            rows.append((frames, merge * hq, merge * wq))
        return torch.tensor(rows, dtype=image_grid_thw.dtype, device=image_grid_thw.device)

    def shorten(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, images: Images):
        """`input_ids` and `attention_mask` with image `i`'s placeholder run cut to `m_i`
        tokens (one sample; runs in the order of the images)."""
        if input_ids.shape[0] != 1:
            raise UsageError(f"a batch of {input_ids.shape[0]} prompts; metacompress.hf "
                             "generates for one prompt at a time")
        ids = input_ids[0]
        mask = torch.ones_like(ids) if attention_mask is None else attention_mask[0]
        placeholder = self.adapter.image_token_id
        runs, start = [], None
        for position, token in enumerate(ids.tolist() + [None]):
            if token == placeholder and start is None:
                start = position
            elif token != placeholder and start is not None:
                runs.append((start, position))
                start = None
        if len(runs) != len(images.tokens):
            raise UsageError(f"the prompt holds {len(runs)} image placeholder runs for "
                             f"{len(images.tokens)} images")
        pieces_ids, pieces_mask, last = [], [], 0
        for (first, end), tokens in zip(runs, images.tokens):
            pieces_ids += [ids[last:first], ids.new_full((tokens.shape[0],), placeholder)]
            pieces_mask += [mask[last:first], mask.new_ones(tokens.shape[0])]
            last = end
        pieces_ids.append(ids[last:])
        pieces_mask.append(mask[last:])
        return torch.cat(pieces_ids)[None], torch.cat(pieces_mask)[None]

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, pixel_values=None, image_sizes=None,
                 image_grid_thw=None, images: Images | None = None, **generate_kwargs) -> Generated:
        """The model's `generate` on a prompt (a processor's outputs: `input_ids` with each
        image's full placeholder run, `pixel_values`, ...) with the images reduced. With
        `images` (from an earlier call), they are reused and `pixel_values` is not read."""
        if images is None:
            if pixel_values is None:
                raise UsageError("pass pixel_values (a processor's outputs) or images")
            images = self.reduce(pixel_values, image_sizes, image_grid_thw)
        ids, mask = self.shorten(input_ids, attention_mask, images)
        extra = {}
        if self.adapter.family in QWEN:
            extra = dict(image_grid_thw=images.grid_thw,
                         mm_token_type_ids=(ids == self.adapter.image_token_id).int())
        if self.adapter.deepstack_levels:
            if len(images.levels) != self.adapter.deepstack_levels:
                raise UsageError(f"images with {len(images.levels)} deepstack levels; "
                                 f"{self.adapter.family} takes {self.adapter.deepstack_levels}")
            encoded = BaseModelOutputWithDeepstackFeatures(pooler_output=list(images.tokens),
                                                           deepstack_features=images.levels)
        else:
            encoded = BaseModelOutputWithPooling(pooler_output=list(images.tokens))
        sequences = self.model.generate(input_ids=ids, attention_mask=mask,
                                        mm_encoder_outputs={"image": encoded}, **extra,
                                        **generate_kwargs)
        if not isinstance(sequences, torch.Tensor):
            sequences = sequences.sequences
        return Generated(sequences, sequences[:, ids.shape[1]:], images)

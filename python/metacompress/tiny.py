"""Tiny random-weight models of the three families, built from configs (nothing downloaded),
with image processors to match: for the tests and for seeing training work on a laptop CPU."""
from __future__ import annotations

import torch
from transformers import (CLIPVisionConfig, LlamaConfig, LlavaConfig,
                          LlavaForConditionalGeneration, LlavaNextConfig,
                          LlavaNextForConditionalGeneration, Qwen2VLConfig,
                          Qwen2VLForConditionalGeneration)
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

NAMES = ("tiny-llava", "tiny-llava-next", "tiny-qwen2-vl")
BOS, EOS, BYTES = 1, 2, 4   # token ids: begin, end (`</s>`), then the 256 bytes from 4
VOCAB = 320
IMAGE_TOKEN = VOCAB - 1
PAD_TOKEN = 0
TILE = 56          # the tiny CLIP's image size: a 4 x 4 grid of 14-pixel patches
PINPOINTS = [[56, 112], [112, 56], [112, 112]]

_TEXT = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
             bos_token_id=1, eos_token_id=2, pad_token_id=PAD_TOKEN, initializer_range=0.2)
_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
               image_size=TILE, patch_size=14, projection_dim=32, initializer_range=0.2)


def build(name: str, seed: int = 0):
    """`(model, image_processor)` for a tiny model by name, weights drawn from `seed`."""
    torch.manual_seed(seed)
    if name == "tiny-llava":
        config = LlavaConfig(vision_config=CLIPVisionConfig(**_VISION), text_config=LlamaConfig(**_TEXT),
                             image_token_id=IMAGE_TOKEN, vision_feature_layer=-2,
                             vision_feature_select_strategy="default")
        model = LlavaForConditionalGeneration(config)
        processor = CLIPImageProcessorPil(size={"shortest_edge": TILE},
                                          crop_size={"height": TILE, "width": TILE})
    elif name == "tiny-llava-next":
        config = LlavaNextConfig(vision_config=CLIPVisionConfig(**_VISION), text_config=LlamaConfig(**_TEXT),
                                 image_token_id=IMAGE_TOKEN, image_grid_pinpoints=PINPOINTS,
                                 vision_feature_layer=-2, vision_feature_select_strategy="default")
        model = LlavaNextForConditionalGeneration(config)
        processor = LlavaNextImageProcessorPil(size={"shortest_edge": TILE},
                                               crop_size={"height": TILE, "width": TILE},
                                               image_grid_pinpoints=PINPOINTS)
    elif name == "tiny-qwen2-vl":
        text = dict(_TEXT, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                            "mrope_section": [2, 3, 3]})
        config = Qwen2VLConfig(
            vision_config=dict(depth=1, embed_dim=32, hidden_size=64, num_heads=4, mlp_ratio=2,
                               patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
            text_config=text, image_token_id=IMAGE_TOKEN, video_token_id=IMAGE_TOKEN - 1,
            vision_start_token_id=IMAGE_TOKEN - 2, vision_end_token_id=IMAGE_TOKEN - 3)
        model = Qwen2VLForConditionalGeneration(config)
        processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=28 * 28 * 48)
    else:
        raise ValueError(f"tiny model {name!r}: expected one of {', '.join(NAMES)}")
    return model.eval(), processor


class TinyProcessor:
    """A processor for the tiny models, which have no tokenizer: text is UTF-8 bytes (token
    `4 + byte`; `</s>` is the end token), a sequence starts with the begin token, and the one
    `<image>` becomes the image's run of visual tokens, as many as the model makes. No chat
    template: conversations take `data.plain_prompt`'s format. Called as a Hugging Face
    processor: `processor(images=[image], text=[text], return_tensors="pt")`."""

    chat_template = None
    image_token = "<image>"

    def __init__(self, model, image_processor):
        from .adapters import Adapter
        self.adapter = Adapter(model)
        self.image_processor = image_processor

    def tokens(self, text: str, visual: int) -> list[int]:
        ids = [BOS]
        for number, piece in enumerate(text.split(self.image_token)):
            if number:
                ids += [self.adapter.image_token_id] * visual
            for index, part in enumerate(piece.split("</s>")):
                ids += ([EOS] if index else []) + [BYTES + b for b in part.encode("utf-8")]
        return ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """The text of token ids: their bytes as UTF-8 (bytes that do not decode replaced);
        the begin, end and image tokens and ids past the bytes are left out."""
        data = bytes(int(i) - BYTES for i in ids if BYTES <= int(i) < BYTES + 256)
        return data.decode("utf-8", errors="replace")

    def __call__(self, images, text, return_tensors="pt"):
        from .data import image_values, pixels_of
        if len(images) != 1 or len(text) != 1 or text[0].count(self.image_token) != 1:
            raise ValueError(f"the tiny processor takes one image and one text with {self.image_token} once")
        out = dict(self.image_processor(images=list(images), return_tensors=return_tensors))
        visual, _ = self.adapter.layout(pixels_of(image_values(out)), 0)
        out["input_ids"] = torch.tensor([self.tokens(text[0], visual)])
        return out

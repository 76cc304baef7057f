"""Tiny random-weight models of the six families (LLaVA-1.5, LLaVA-NeXT, Qwen2-VL, Qwen2.5-VL,
Qwen3-VL, LLaVA-OneVision), built from configs (nothing downloaded), with image processors to
match: for the tests and for seeing training work on a laptop CPU."""
from __future__ import annotations

import torch
from transformers import (CLIPVisionConfig, LlamaConfig, LlavaConfig,
                          LlavaForConditionalGeneration, LlavaNextConfig,
                          LlavaNextForConditionalGeneration, LlavaOnevisionConfig,
                          LlavaOnevisionForConditionalGeneration, Qwen2_5_VLConfig,
                          Qwen2_5_VLForConditionalGeneration, Qwen2Config, Qwen2VLConfig,
                          Qwen2VLForConditionalGeneration, Qwen3VLConfig,
                          Qwen3VLForConditionalGeneration, SiglipVisionConfig)
from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
    LlavaOnevisionImageProcessorPil)
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

NAMES = ("tiny-llava", "tiny-llava-next", "tiny-qwen2-vl", "tiny-qwen2.5-vl", "tiny-qwen3-vl",
         "tiny-llava-onevision")
BOS, EOS, BYTES = 1, 2, 4   # token ids: begin, end (`</s>`), then the 256 bytes from 4
VOCAB = 320
IMAGE_TOKEN = VOCAB - 1
PAD_TOKEN = 0
TILE = 56          # the tiny CLIP's image size: a 4 x 4 grid of 14-pixel patches
PINPOINTS = [[56, 112], [112, 56], [112, 112]]
# LLaVA-OneVision's 1x1 to 6x6 tiles of 384, scaled down: 1x1 to 3x3 tiles of 56, and
# anyres_max_4 so that the crop grids past 4 tiles' worth (x 1.1) are down-sampled.
ONEVISION_PINPOINTS = [[TILE * i, TILE * j] for i in range(1, 4) for j in range(1, 4)]
ONEVISION_ASPECT = "anyres_max_4"

_TEXT = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
             bos_token_id=1, eos_token_id=2, pad_token_id=PAD_TOKEN, initializer_range=0.2)
_QWEN_TOKENS = dict(image_token_id=IMAGE_TOKEN, video_token_id=IMAGE_TOKEN - 1,
                    vision_start_token_id=IMAGE_TOKEN - 2, vision_end_token_id=IMAGE_TOKEN - 3)
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
    elif name == "tiny-qwen2.5-vl":
        # Windows of 56 pixels (2 x 2 merged tokens): the tower permutes the tokens into windows
        # and restores row-major order after the merger. Block 1 attends fully, block 0 by window.
        text = dict(_TEXT, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                            "mrope_section": [2, 3, 3]})
        config = Qwen2_5_VLConfig(
            vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4,
                               out_hidden_size=64, patch_size=14, spatial_merge_size=2,
                               temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1],
                               tokens_per_second=2),
            text_config=text, **_QWEN_TOKENS)
        model = Qwen2_5_VLForConditionalGeneration(config)
        processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=28 * 28 * 48)
    elif name == "tiny-qwen3-vl":
        # 16-pixel patches as Qwen3-VL's; deepstack features from vision blocks 0 and 1 (of 3),
        # added to the first two decoder layers' hidden states at the image tokens.
        text = dict(_TEXT, head_dim=16, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                          "mrope_section": [4, 2, 2],
                                                          "mrope_interleaved": True})
        config = Qwen3VLConfig(
            vision_config=dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=4,
                               out_hidden_size=64, patch_size=16, spatial_merge_size=2,
                               temporal_patch_size=2, num_position_embeddings=16,
                               deepstack_visual_indexes=[0, 1]),
            text_config=text, **_QWEN_TOKENS)
        model = Qwen3VLForConditionalGeneration(config)
        processor = Qwen2VLImageProcessorPil(patch_size=16, merge_size=2, min_pixels=64 * 64,
                                             max_pixels=32 * 32 * 48)
    elif name == "tiny-llava-onevision":
        # A SigLIP tile of 56 pixels (4 x 4 patches of 14), no CLS token: all its tokens.
        siglip = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, image_size=TILE, patch_size=14)
        config = LlavaOnevisionConfig(vision_config=siglip, text_config=Qwen2Config(**_TEXT),
                                      image_token_id=IMAGE_TOKEN, video_token_id=IMAGE_TOKEN - 1,
                                      image_grid_pinpoints=ONEVISION_PINPOINTS,
                                      vision_aspect_ratio=ONEVISION_ASPECT, vision_feature_layer=-1,
                                      vision_feature_select_strategy="full")
        model = LlavaOnevisionForConditionalGeneration(config)
        processor = LlavaOnevisionImageProcessorPil(size={"height": TILE, "width": TILE},
                                                    image_grid_pinpoints=ONEVISION_PINPOINTS)
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
        from .inputs import image_values, pixels_of
        if len(images) != 1 or len(text) != 1 or text[0].count(self.image_token) != 1:
            raise ValueError(f"the tiny processor takes one image and one text with {self.image_token} once")
        out = dict(self.image_processor(images=list(images), return_tensors=return_tensors))
        visual, _ = self.adapter.layout(pixels_of(image_values(out)), 0)
        out["input_ids"] = torch.tensor([self.tokens(text[0], visual)])
        return out

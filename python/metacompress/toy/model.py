"""The toy models' architecture and processor, built from configs (nothing downloaded).

`shapes`: a LLaVA-NeXT model (`LlavaNextForConditionalGeneration`) with a CLIP vision tower of
128 x 128 tiles in 8-pixel patches (16 x 16 tokens a tile), one grid pinpoint (128 x 128), so a
128 x 128 image is a base tile, one crop and a newline token after each of the crop's 16 rows:
256 + 256 + 16 = 528 visual tokens in LLaVA-NeXT's real order. The language model is a small
Llama over a word-level vocabulary (the task's words, `USER`, `ASSISTANT`, `:` and `?`). The
processor is transformers' own `LlavaNextProcessor`, so `<image>` is expanded to the packed
feature count by transformers' arithmetic, and prompts take LLaVA-1.5's plain format
(`USER: <image>\\nQUESTION ASSISTANT: ANSWER</s>`, see `metacompress.tasks.conversations.plain_prompt`).
"""
from __future__ import annotations

import torch
from transformers import (CLIPVisionConfig, GenerationConfig, LlamaConfig, LlavaNextConfig,
                          LlavaNextForConditionalGeneration, LlavaNextProcessor, PreTrainedTokenizerFast)
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

from ..tasks import shapes

TILE, PATCH = shapes.SIZE, 8
SPECIAL = ("<pad>", "<s>", "</s>", "<unk>", "<image>")
PAD, BOS, EOS, UNK, IMAGE = range(len(SPECIAL))
PROMPT_WORDS = ("USER", "ASSISTANT", ":", "?")


def vocabulary() -> dict[str, int]:
    """Token ids: the special tokens, then the prompt's and the task's words."""
    words = list(SPECIAL) + list(PROMPT_WORDS) + [w for w in shapes.words() if w not in PROMPT_WORDS]
    return {word: index for index, word in enumerate(words)}


def tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer (split at spaces and punctuation; a begin token first)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, decoders
    backend = Tokenizer(models.WordLevel(vocabulary(), unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", BOS)])
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)   # words joined by spaces
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="<pad>",
                                   extra_special_tokens={"image_token": "<image>"}, padding_side="left")


def processor() -> LlavaNextProcessor:
    image_processor = LlavaNextImageProcessorPil(size={"shortest_edge": TILE},
                                                 crop_size={"height": TILE, "width": TILE},
                                                 image_grid_pinpoints=[[TILE, TILE]])
    return LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer(), patch_size=PATCH,
                              vision_feature_select_strategy="default", image_token="<image>",
                              num_additional_image_tokens=1)


def config() -> LlavaNextConfig:
    vocab = len(vocabulary())
    vision = CLIPVisionConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=3,
                              num_attention_heads=4, image_size=TILE, patch_size=PATCH,
                              projection_dim=64)
    text = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
                       bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, tie_word_embeddings=False)
    return LlavaNextConfig(vision_config=vision, text_config=text, image_token_id=IMAGE,
                           image_grid_pinpoints=[[TILE, TILE]], vision_feature_layer=-1,
                           vision_feature_select_strategy="default", image_seq_length=TILE // PATCH * (TILE // PATCH),
                           tie_word_embeddings=False)


def build(seed: int = 0) -> LlavaNextForConditionalGeneration:
    """The untrained model, its weights drawn from `seed`."""
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config())
    model.generation_config = GenerationConfig(bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
                                               do_sample=False, max_new_tokens=4)
    return model


def answer_mask(ids: torch.Tensor) -> torch.Tensor:
    """True at each answer word (the token after `ASSISTANT :`) and the `</s>` after it."""
    vocab = vocabulary()
    mask = torch.zeros_like(ids, dtype=torch.bool)
    after = (ids[:-2] == vocab["ASSISTANT"]) & (ids[1:-1] == vocab[":"])
    mask[2:] |= after
    mask[3:] |= after[:-1] & (ids[3:] == EOS)
    return mask

"""A model's inputs: one image and a multi-turn conversation as token ids, with the answer
tokens of every turn marked (`Sample`), batches padded on the right (`Batch`), an image
through the model's processor (`process_image`, `pixels_of`), and a conversation rendered by
the processor's chat template or the plain LLaVA format (`render_chat`, `conversation_sample`).
Training and evaluation both build on these."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from ..tasks.conversations import llava_messages, plain_prompt
from .adapters import Pixels


@dataclass
class Sample:
    """One conversation: `input_ids` (its image's placeholder run at full length), `answer`
    (True at the tokens of every turn's answer) and the processed image."""
    input_ids: torch.Tensor
    answer: torch.Tensor
    pixel_values: torch.Tensor
    image_size: torch.Tensor | None = None   # LLaVA-NeXT, -OneVision: (height, width)
    grid_thw: torch.Tensor | None = None     # Qwen2-VL, 2.5-VL, 3-VL: (t, h, w)


@dataclass
class Batch:
    input_ids: torch.Tensor       # b x L, right-padded
    attention_mask: torch.Tensor  # b x L
    answer: torch.Tensor          # b x L (bool)
    pixels: Pixels

    def to(self, device):
        return Batch(self.input_ids.to(device), self.attention_mask.to(device),
                     self.answer.to(device), self.pixels.to(device))


def pad(rows: list[torch.Tensor], value) -> torch.Tensor:
    """Right-pads 1-D tensors to one length."""
    length = max(len(r) for r in rows)
    return torch.stack([torch.cat([r, r.new_full((length - len(r),), value)]) for r in rows])


def collate(samples: list[Sample], pad_id: int = 0) -> Batch:
    ids = pad([s.input_ids for s in samples], pad_id)
    mask = pad([torch.ones_like(s.input_ids) for s in samples], 0)
    answer = pad([s.answer for s in samples], False)
    if samples[0].grid_thw is not None:
        pixels = Pixels(torch.cat([s.pixel_values for s in samples]),
                        image_grid_thw=torch.stack([s.grid_thw for s in samples]))
    elif samples[0].image_size is not None:
        # Anyres crops: as many patches per image as its grid needs, zero-padded to the most.
        most = max(s.pixel_values.shape[0] for s in samples)
        values = [torch.cat([s.pixel_values, s.pixel_values.new_zeros(most - s.pixel_values.shape[0],
                                                                      *s.pixel_values.shape[1:])])
                  for s in samples]
        pixels = Pixels(torch.stack(values), image_sizes=torch.stack([s.image_size for s in samples]))
    else:
        pixels = Pixels(torch.stack([s.pixel_values for s in samples]))
    return Batch(ids, mask, answer, pixels)


def image_values(out) -> dict:
    """One image's tensors from a processor's output (`pixel_values` and, by family,
    `image_size` or `grid_thw`), as `Sample` takes them."""
    if "image_grid_thw" in out:
        return {"pixel_values": out["pixel_values"], "grid_thw": out["image_grid_thw"][0]}
    values = {"pixel_values": out["pixel_values"][0]}
    if "image_sizes" in out:
        values["image_size"] = out["image_sizes"][0]
    return values


def process_image(image_processor, image: Image.Image) -> dict:
    """The image processor's tensors for one image (see `image_values`)."""
    return image_values(image_processor(images=[image], return_tensors="pt"))


def pixels_of(values: dict) -> Pixels:
    """The `Pixels` of one processed image, as a batch of one."""
    empty = torch.zeros(1, dtype=torch.long)
    return collate([Sample(empty, empty.bool(), **values)]).pixels


def render_chat(processor, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The processor's chat template's rendering, or `plain_prompt`'s where it has none."""
    if getattr(processor, "chat_template", None):
        return processor.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)
    return plain_prompt(messages, getattr(processor, "image_token", None) or "<image>",
                        add_generation_prompt)


def conversation_sample(processor, image: Image.Image, conversations: list[dict]) -> Sample:
    """A sample from a model's processor (with its chat template, or the plain format): the
    whole conversation, with the tokens each assistant turn adds marked as its answer (found by
    rendering the conversation up to each turn, with and without that turn's answer)."""
    messages = llava_messages(conversations)
    encode = lambda text: processor(images=[image], text=[text], return_tensors="pt")
    full = encode(render_chat(processor, messages))
    ids = full["input_ids"][0]
    answer = torch.zeros_like(ids, dtype=torch.bool)
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render_chat(processor, messages[:index], add_generation_prompt=True)
        through = render_chat(processor, messages[:index + 1])
        start = encode(before)["input_ids"].shape[1]
        end = encode(through)["input_ids"].shape[1]
        if not torch.equal(encode(through)["input_ids"][0], ids[:end]):
            raise ValueError("the chat template does not render a conversation as a prefix of itself")
        answer[start:end] = True
    return Sample(ids, answer, **image_values(full))

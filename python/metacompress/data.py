"""Training samples: one image and a multi-turn conversation as token ids, with the answer
tokens of every turn marked; batches padded on the right. Samples come from LLaVA-format
conversation files (with the model's processor and chat template) or, for the tiny models,
from synthetic conversations."""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

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


# --- synthetic conversations (tiny models) ---------------------------------------------------

def synthetic_image(rng: random.Random) -> Image.Image:
    """A random image of random size with a few coloured blocks on noise."""
    width, height = rng.randint(40, 130), rng.randint(40, 130)
    array = np.full((height, width, 3), rng.randint(0, 255), dtype=np.uint8)
    for _ in range(rng.randint(2, 5)):
        x0, y0 = rng.randint(0, width - 8), rng.randint(0, height - 8)
        array[y0:y0 + rng.randint(4, 30), x0:x0 + rng.randint(4, 30)] = [rng.randint(0, 255) for _ in range(3)]
    noise = np.array([rng.randint(-20, 20) for _ in range(width * height * 3)]).reshape(height, width, 3)
    return Image.fromarray(np.clip(array + noise, 0, 255).astype(np.uint8))


def synthetic_sample(adapter, image_processor, rng: random.Random, turns: int = 3,
                     vocabulary: int = 300) -> Sample:
    """A synthetic `turns`-turn conversation about a random image: `bos`, the image run, then
    per turn a question and an answer of random words (the answers marked)."""
    values = process_image(image_processor, synthetic_image(rng))
    pixels = pixels_of(values)
    n, _ = adapter.layout(pixels, 0)
    words = lambda count: [rng.randint(3, vocabulary - 30) for _ in range(count)]
    ids, answer = [1] + [adapter.image_token_id] * n, [False] * (1 + n)
    for _ in range(turns):
        question, reply = words(rng.randint(3, 7)), words(rng.randint(2, 5)) + [2]
        ids += question + reply
        answer += [False] * len(question) + [True] * len(reply)
    return Sample(torch.tensor(ids), torch.tensor(answer), **values)


# --- toy tasks (metacompress.toy) ---------------------------------------------------------------

def toy_samples(processor, task: str, count: int, seed: int = 0) -> list[Sample]:
    """`count` training conversations of a toy task (`shapes`: three questions about a drawn
    image), from its training split (never in a question set), made by the toy model's
    processor as any LLaVA-format conversation is."""
    from . import toy
    return [conversation_sample(processor, item.image, item.conversations())
            for item in toy.training_items(task, seed, count)]


# --- LLaVA-format conversation files ---------------------------------------------------------

def llava_messages(conversations: list[dict]) -> list[dict]:
    """LLaVA JSON turns (`from: human|gpt`, `value`, `<image>` in the first) as chat messages
    with the image as a content part."""
    messages = []
    for turn in conversations:
        role = {"human": "user", "gpt": "assistant"}.get(turn["from"])
        if role is None:
            raise ValueError(f"conversation turn from {turn['from']!r}: expected human or gpt")
        text = turn["value"]
        content = [{"type": "text", "text": text.replace("<image>", "").strip()}]
        if "<image>" in text:
            content.insert(0, {"type": "image"})
        messages.append({"role": role, "content": content})
    return messages


def plain_prompt(messages: list[dict], image_token: str = "<image>",
                 add_generation_prompt: bool = False) -> str:
    """A conversation in LLaVA-1.5's plain format (`USER: <image>\nQ ASSISTANT: A</s>...`), for
    processors that have no chat template (the tiny models')."""
    text = ""
    for message in messages:
        parts = "".join(image_token + "\n" if c["type"] == "image" else c["text"] for c in message["content"])
        text += f"USER: {parts} " if message["role"] == "user" else f"ASSISTANT: {parts}</s>"
    return text + ("ASSISTANT:" if add_generation_prompt else "")


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


class DataError(ValueError):
    """A conversations file or image that cannot be used; the message names it."""


def read_conversations(path, images) -> list[dict]:
    """The records of a LLaVA-format file, checked before any model work: a non-empty JSON list
    of `{"image": FILE, "conversations": [{"from": "human"|"gpt", "value": TEXT}, ...]}`, each
    with `<image>` once in a human turn and at least one gpt answer, its image a file under
    the folder `images` that PIL reads. Raises `DataError` naming the file and record."""
    path, images = Path(path), Path(images)
    if not path.is_file():
        raise DataError(f"--data {path}: no such file" if not path.exists()
                        else f"--data {path} is not a regular file; expected a JSON file")
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise DataError(f"--data {path} is not UTF-8 text ({error.reason} at byte {error.start}); "
                        "expected a JSON list") from None
    except json.JSONDecodeError as error:
        raise DataError(f"--data {path} is not valid JSON: {error.msg} at line {error.lineno} "
                        f"column {error.colno}") from None
    if not isinstance(records, list):
        raise DataError(f"--data {path} holds a JSON {type(records).__name__}; expected a list of "
                        '{"image", "conversations"} records')
    if not records:
        raise DataError(f"--data {path} is an empty list; expected at least one record")
    if not images.is_dir():
        raise DataError(f"--images {images}: no such folder")
    checked = set()
    for index, record in enumerate(records):
        where = f"--data {path} record {index}"
        if not isinstance(record, dict):
            raise DataError(f"{where} is a {type(record).__name__}; expected an object with "
                            '"image" and "conversations"')
        image = record.get("image")
        if not isinstance(image, str) or not image:
            raise DataError(f'{where} has no "image" file name; expected a string')
        turns = record.get("conversations")
        if not isinstance(turns, list) or not turns:
            raise DataError(f'{where} has no "conversations" list; expected a non-empty list of turns')
        placeholders = 0
        for number, turn in enumerate(turns):
            if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
                raise DataError(f'{where} turn {number}: expected {{"from": "human" or "gpt", "value": text}}')
            if turn.get("from") not in ("human", "gpt"):
                raise DataError(f"{where} turn {number} is from {turn.get('from')!r}; expected human or gpt")
            count = turn["value"].count("<image>")
            if count and turn["from"] != "human":
                raise DataError(f"{where} turn {number}: <image> in a gpt answer; expected it in a human turn")
            placeholders += count
        if placeholders != 1:
            raise DataError(f"{where} has <image> {placeholders} times; expected it once, in a human turn")
        if not any(turn["from"] == "gpt" for turn in turns):
            raise DataError(f"{where} has no gpt answer; expected at least one (the loss is over answers)")
        file = images / image
        if file not in checked:
            if not file.is_file():
                raise DataError(f"{where}: image {file}: no such file")
            try:
                with Image.open(file) as opened:
                    opened.verify()
            except Exception as error:  # PIL raises several types for a file it cannot read
                raise DataError(f"{where}: image {file} is not an image PIL reads ({error})") from None
            checked.add(file)
    return records


def llava_json_samples(processor, path, images, limit: int | None = None, records=None):
    """Samples from a LLaVA-format file (see `read_conversations`): a JSON list of
    `{"image": FILE, "conversations": [...]}`, images under the folder `images`. A record that
    cannot be made a sample raises `DataError` naming it. `records`: the file's records, when
    already read."""
    records = read_conversations(path, images) if records is None else records
    for index, record in enumerate(records[:limit]):
        try:
            with Image.open(Path(images) / record["image"]) as opened:
                image = opened.convert("RGB")
            sample = conversation_sample(processor, image, record["conversations"])
        except (ValueError, OSError) as error:
            raise DataError(f"--data {path} record {index}: {error}") from None
        yield sample

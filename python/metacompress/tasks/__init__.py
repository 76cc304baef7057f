"""Question sets for the evaluation (SPEC section 10): images with short-answer questions.

    items = tasks.get("synthetic", seed=0, samples=8)      # a shipped task, generated from the seed
    items = tasks.llava_json("questions.json", "images/")  # LLaVA-format conversations, GQA-style

An item is an `image` (PIL, RGB) and its `questions`, each with `text` and a reference
`answer` (and a `kind` where the task has types). The toy tasks (`shapes`, `tasks/shapes.py`)
are items of this shape already; the toy models of `metacompress.toy` were trained on them.

This room is data only (images and questions; numpy and PIL, no model): training and
evaluation both read it.

Splits of a toy task: question sets (`get`) use item seeds >= 0; every training image (the
toy models' and P_meta's, `training_items`) has a negative item seed, so no question set was
trained on.

Shipped tasks:
- `synthetic`: a stand-in for the tiny random-weight models (`tiny-*`), whose answers mean
  nothing: `data.synthetic_image`'s random images with three templated questions each whose
  answers follow from the pixels (is the image bright, which side is brighter, which colour
  channel is strongest). It only shows that the harness runs end to end.
- `shapes` (and any other name in `TOY`): the toy task the toy models were trained on
  (held-out images).
"""
from __future__ import annotations

from ..extras import require

require("metacompress.tasks", "hf")

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from . import shapes
from .conversations import read_conversations
from .synthetic import synthetic_image

TOY = {"shapes": shapes}


@dataclass
class Question:
    text: str
    answer: str
    kind: str | None = None


@dataclass
class Item:
    """One image and the questions asked about it, in order (the turns of a conversation)."""
    image: Image.Image
    questions: list[Question] = field(default_factory=list)


class TaskError(ValueError):
    """An unknown task, or one this build cannot make; the message says which."""


def names() -> tuple[str, ...]:
    """The shipped tasks' names."""
    return ("synthetic",) + tuple(TOY)


def get(name: str, seed: int, samples: int) -> list[Item]:
    """`samples` items of the shipped task `name`, the same for the same `seed`."""
    if name == "synthetic":
        rng = random.Random(f"synthetic-{seed}")
        return [synthetic_item(rng) for _ in range(samples)]
    if name in TOY:
        if seed < 0:
            raise ValueError(f"seed {seed}: question sets take seeds >= 0 (negative ones are training images)")
        return list(TOY[name].items(seed, samples))
    raise TaskError(f"task {name!r}: expected one of {', '.join(names())}, or a LLaVA-format "
                    "JSON file with --images")


def training_items(name: str, seed: int, count: int) -> list:
    """`count` training items of the toy task `name` (negative item seeds, never in a
    question set)."""
    if name not in TOY:
        raise ValueError(f"toy task {name!r}: expected one of {', '.join(TOY)}")
    return [TOY[name].item(-1 - 10 ** 9 * seed - index) for index in range(count)]


def synthetic_item(rng: random.Random) -> Item:
    """A random image and three questions whose answers follow from its pixels."""
    image = synthetic_image(rng)
    pixels = np.asarray(image, dtype=np.float32)
    half = pixels.shape[1] // 2
    left, right = pixels[:, :half].mean(), pixels[:, half:].mean()
    channel = ("red", "green", "blue")[int(pixels.reshape(-1, 3).mean(0).argmax())]
    questions = [
        Question("is the image bright?", "yes" if pixels.mean() > 127.5 else "no", "bright"),
        Question("which side is brighter?", "left" if left >= right else "right", "side"),
        Question("which colour is strongest?", channel, "colour"),
    ]
    rng.shuffle(questions)
    return Item(image, questions)


def llava_json(path, images, samples: int | None = None) -> list[Item]:
    """Items from a LLaVA-format file (checked by `data.read_conversations`: a JSON list of
    `{"image": FILE, "conversations": [{"from": "human"|"gpt", "value": TEXT}, ...]}`, images
    under the folder `images`): each human turn followed by a gpt turn is a question (its
    `<image>` removed) and its reference answer. `samples`: the first that many records."""
    records = read_conversations(path, images)
    items = []
    for record in records[:samples]:
        with Image.open(Path(images) / record["image"]) as opened:
            image = opened.convert("RGB")
        turns = record["conversations"]
        questions = [Question(asked["value"].replace("<image>", "").strip(), answered["value"].strip())
                     for asked, answered in zip(turns, turns[1:])
                     if asked["from"] == "human" and answered["from"] == "gpt"]
        items.append(Item(image, questions))
    return items

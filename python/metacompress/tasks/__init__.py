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
from typing import Callable, Iterator

import numpy as np
from PIL import Image

from . import shapes
from .conversations import read_conversations, read_image
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


MOST_ITEMS = 1_000_000
"""The most items a question set may have (`--samples`, `toy --items`): far past any
evaluation, and refused in one line above it rather than run for days."""


class Items:
    """`count` items made one at a time as they are read, never all held: a question set of
    any size costs one image's memory. `items()` makes a fresh iterator over the same items
    (the same seed), so the set can be read any number of times."""

    def __init__(self, count: int, items: Callable[[], Iterator[Item]]):
        self.count, self._items = count, items

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Item]:
        made = self._items()
        for _ in range(self.count):
            yield next(made)


def check_count(count: int, what: str = "samples") -> None:
    """Refuses a question set size outside `1..=MOST_ITEMS` (`what` names the flag)."""
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MOST_ITEMS:
        raise TaskError(f"--{what} {count}: expected 1 to {MOST_ITEMS:,} items".replace(",", " "))


def items(name: str, seed: int, samples: int) -> Items:
    """`samples` items of the shipped task `name`, the same for the same `seed`, made as they
    are read (`Items`)."""
    check_count(samples)
    if name == "synthetic":
        def synthetic() -> Iterator[Item]:
            rng = random.Random(f"synthetic-{seed}")
            while True:
                yield synthetic_item(rng)
        return Items(samples, synthetic)
    if name in TOY:
        if seed < 0:
            raise TaskError(f"seed {seed}: question sets take seeds >= 0 (negative ones are training images)")
        task = TOY[name]
        return Items(samples, lambda: (task.item(seed * 1_000_003 + index)
                                       for index in range(samples)))
    raise TaskError(f"task {name!r}: expected one of {', '.join(names())}, or a LLaVA-format "
                    "JSON file with --images")


def get(name: str, seed: int, samples: int) -> list[Item]:
    """`samples` items of the shipped task `name`, the same for the same `seed`, as a list
    (every image in memory; `items` makes them as they are read)."""
    return list(items(name, seed, samples))


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
    return list(llava_items(read_conversations(path, images), images, samples))


def llava_items(records: list[dict], images, samples: int | None = None) -> Items:
    """`llava_json`'s items of records `read_conversations` checked, each image read (within
    `images.MOST_PIXELS`, whole) as it is reached."""
    records = records[:samples]

    def made() -> Iterator[Item]:
        for record in records:
            image = read_image(Path(images) / record["image"])
            turns = record["conversations"]
            questions = [Question(asked["value"].replace("<image>", "").strip(), answered["value"].strip())
                         for asked, answered in zip(turns, turns[1:])
                         if asked["from"] == "human" and answered["from"] == "gpt"]
            yield Item(image, questions)
    return Items(len(records), made)

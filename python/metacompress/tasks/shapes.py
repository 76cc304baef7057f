"""The `shapes` task: procedurally drawn images (a few small coloured circles, squares and
triangles on a textured grey background) with three templated questions each, whose one-word
answers need the image.

Question types (each image gets three of the four, each about a different shape kind):

| type     | template                          | answers                 | chance |
| -------- | --------------------------------- | ----------------------- | ------ |
| colour   | what colour is the SHAPE?         | red, green, blue, yellow | 1/4   |
| count    | how many SHAPEs?                  | one, two, three         | 1/3    |
| exists   | is there a SHAPE?                 | yes, no                 | 1/2    |
| side     | where is the SHAPE?               | left, right             | 1/2    |

Every answer is drawn uniformly from its type's answers first and the scene is built to make
it true, independently of the question's wording and of the other questions about the same
image, so no model that does not look can beat `chance` (uniform over the type's answers, which
here is also the majority answer's share) in expectation. A scene holds 3 to 6 objects of 20
to 26 pixels on a 128 x 128 image (together 5-15 % of it, 9 % on average); a shape asked about by
colour or side is the only one of its kind; a shape asked about by side has its centre in the
left or right 40 % of the image.

`items(seed, count)` is the question set: the same seed gives the same images and questions.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIZE = 128
SHAPES = ("circle", "square", "triangle")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles"}
COLOURS = {"red": (215, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 215), "yellow": (230, 205, 40)}
NUMBERS = ("one", "two", "three")
ANSWERS = {"colour": tuple(COLOURS), "count": NUMBERS, "exists": ("yes", "no"), "side": ("left", "right")}
TYPES = tuple(ANSWERS)
CHANCE = {kind: 1.0 / len(answers) for kind, answers in ANSWERS.items()}
TURNS = 3
SIZES = (20, 26)   # the objects' size range in pixels


@dataclass
class Question:
    kind: str       # one of TYPES
    text: str       # e.g. "what colour is the circle?"
    answer: str     # one word


@dataclass
class Item:
    """One image and its three questions."""
    image: Image.Image
    questions: list[Question]

    def conversations(self) -> list[dict]:
        """LLaVA-format turns (`<image>` in the first question), as the trainer reads them."""
        turns = []
        for index, question in enumerate(self.questions):
            text = ("<image>\n" if index == 0 else "") + question.text
            turns += [{"from": "human", "value": text}, {"from": "gpt", "value": question.answer}]
        return turns


def question_text(kind: str, shape: str) -> str:
    return {"colour": f"what colour is the {shape}?",
            "count": f"how many {PLURALS[shape]}?",
            "exists": f"is there a {shape}?",
            "side": f"where is the {shape}?"}[kind]


def words() -> list[str]:
    """Every word the questions and answers use (the toy tokenizer's vocabulary)."""
    found = set()
    for kind in TYPES:
        for shape in SHAPES:
            found.update(question_text(kind, shape).replace("?", " ? ").split())
        found.update(ANSWERS[kind])
    return sorted(found)


def normalise(answer: str) -> str:
    """An answer as compared with the reference: lower case, the first word, no punctuation."""
    parts = "".join(c if c.isalnum() else " " for c in answer.lower()).split()
    return parts[0] if parts else ""


def _background(rng: np.random.Generator) -> np.ndarray:
    """A textured, nearly grey background: low-frequency blotches plus fine grain."""
    coarse = rng.uniform(-1, 1, size=(5, 5, 1))
    image = Image.fromarray(((coarse[..., 0] + 1) * 127.5).astype(np.uint8)).resize((SIZE, SIZE), Image.BICUBIC)
    blotches = (np.asarray(image, dtype=np.float32) / 127.5 - 1)[..., None]
    level = rng.uniform(90, 170)
    tint = rng.uniform(-8, 8, size=3)
    grain = rng.normal(0, 7, size=(SIZE, SIZE, 3))
    stripes = 6 * np.sin(np.arange(SIZE) * rng.uniform(0.2, 0.8) + rng.uniform(0, 6.3))[None, :, None]
    return level + 30 * blotches + tint + grain + stripes


def _draw(draw: ImageDraw.ImageDraw, shape: str, x: float, y: float, size: float, colour, angle: float):
    r = size / 2
    if shape == "circle":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
    elif shape == "square":
        draw.rectangle([x - r, y - r, x + r, y + r], fill=colour)
    else:
        points = [(x + r * 1.15 * math.sin(angle + k * 2 * math.pi / 3),
                   y - r * 1.15 * math.cos(angle + k * 2 * math.pi / 3)) for k in range(3)]
        draw.polygon(points, fill=colour)


def _scene(rng: random.Random) -> tuple[list[tuple[str, str, str | None]], list[Question]]:
    """The objects to draw, `(shape, colour, side or None)`, and the questions they answer."""
    kinds = rng.sample(TYPES, TURNS)
    shapes = rng.sample(SHAPES, TURNS)
    objects, questions = [], []
    for kind, shape in zip(kinds, shapes):
        answer = rng.choice(ANSWERS[kind])
        colour = lambda: rng.choice(tuple(COLOURS))
        if kind == "colour":
            objects.append((shape, answer, None))
        elif kind == "side":
            objects.append((shape, colour(), answer))
        elif kind == "count":
            objects += [(shape, colour(), None)] * (NUMBERS.index(answer) + 1)
        else:
            objects += [(shape, colour(), None)] * (0 if answer == "no" else rng.randint(1, 2))
        questions.append(Question(kind, question_text(kind, shape), answer))
    return objects, questions


def _place(rng: random.Random, objects) -> list[tuple[str, str, float, float, float]]:
    """Positions without overlap (a few pixels apart), by rejection; `None` if it fails."""
    placed = []
    for shape, colour, side in objects:
        for _ in range(200):
            size = rng.uniform(*SIZES)
            margin = size / 2 + 2
            if side == "left":
                x = rng.uniform(margin, 0.4 * SIZE)
            elif side == "right":
                x = rng.uniform(0.6 * SIZE, SIZE - margin)
            else:
                x = rng.uniform(margin, SIZE - margin)
            y = rng.uniform(margin, SIZE - margin)
            if all(math.hypot(x - px, y - py) > 0.75 * (size + ps) + 3 for _, _, px, py, ps in placed):
                placed.append((shape, colour, x, y, size))
                break
        else:
            return None
    return placed


def item(seed: int) -> Item:
    """The image and questions of one seed."""
    return render(seed)[0]


def render(seed: int) -> tuple[Item, np.ndarray, list[tuple[int, float, float]]]:
    """`item(seed)`, its label map (`SIZE x SIZE`, 0 for the background, else
    `1 + 4 * shape + colour` by index in SHAPES and COLOURS) and its objects' centres
    `(shape, x, y)`: what the toy model's training labels patches with."""
    rng = random.Random(f"shapes-{seed}")
    while True:
        objects, questions = _scene(rng)
        placed = _place(rng, objects)
        if placed is not None:
            break
    pixels = _background(np.random.default_rng(rng.getrandbits(64)))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    labels = Image.new("L", (SIZE, SIZE), 0)
    draw, draw_labels = ImageDraw.Draw(image), ImageDraw.Draw(labels)
    for shape, colour, x, y, size in placed:
        jitter = [rng.randint(-20, 20) for _ in range(3)]
        fill = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLOURS[colour], jitter))
        angle = rng.uniform(0, 2 * math.pi)
        _draw(draw, shape, x, y, size, fill, angle)
        _draw(draw_labels, shape, x, y, size, 1 + 4 * SHAPES.index(shape) + tuple(COLOURS).index(colour), angle)
    centres = [(SHAPES.index(shape), x, y) for shape, _, x, y, _ in placed]
    return Item(image, questions), np.asarray(labels), centres


def items(seed: int, count: int) -> list[Item]:
    """`count` items from seed `seed` (item `i` is `item(seed * 1_000_003 + i)`, so held-out
    sets are other seeds)."""
    return [item(seed * 1_000_003 + index) for index in range(count)]


def blank() -> Image.Image:
    """The blank image: a flat mid grey of the task's size."""
    return Image.new("RGB", (SIZE, SIZE), (128, 128, 128))


def chance(questions: list[Question]) -> float:
    """The expected accuracy of answering without the image: the mean of `CHANCE` over the
    questions' types."""
    return sum(CHANCE[q.kind] for q in questions) / len(questions)

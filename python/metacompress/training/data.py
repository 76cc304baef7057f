"""Training samples (`metacompress.models.inputs.Sample`) from their sources: LLaVA-format
conversation files (with the model's processor and chat template), a toy task's training
split, or, for the tiny models, synthetic conversations."""
from __future__ import annotations

import random
from pathlib import Path

import torch
from PIL import Image

from .. import tasks
from ..models.inputs import Sample, conversation_sample, pixels_of, process_image
from ..tasks.conversations import DataError, read_conversations
from ..tasks.synthetic import synthetic_image


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


def toy_samples(processor, task: str, count: int, seed: int = 0) -> list[Sample]:
    """`count` training conversations of a toy task (`shapes`: three questions about a drawn
    image), from its training split (never in a question set), made by the toy model's
    processor as any LLaVA-format conversation is."""
    return [conversation_sample(processor, item.image, item.conversations())
            for item in tasks.training_items(task, seed, count)]


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

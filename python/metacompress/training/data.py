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


def synthetic_draw(rng: random.Random, turns: int = 3, vocabulary: int = 300):
    """What `synthetic_sample` draws from `rng`, before any processing: the image and, per
    turn, a question and an answer of random words (the answer ending with the end token)."""
    image = synthetic_image(rng)
    words = lambda count: [rng.randint(3, vocabulary - 30) for _ in range(count)]
    dialogue = []
    for _ in range(turns):
        question = words(rng.randint(3, 7))
        dialogue.append((question, words(rng.randint(2, 5)) + [2]))
    return image, dialogue


def synthetic_prepare(adapter, image_processor, draw) -> Sample:
    """The sample of a `synthetic_draw`: `bos`, the image run, then each turn's question and
    answer (the answers marked)."""
    image, dialogue = draw
    values = process_image(image_processor, image)
    n, _ = adapter.layout(pixels_of(values), 0)
    ids, answer = [1] + [adapter.image_token_id] * n, [False] * (1 + n)
    for question, reply in dialogue:
        ids += question + reply
        answer += [False] * len(question) + [True] * len(reply)
    return Sample(torch.tensor(ids), torch.tensor(answer), **values)


def synthetic_sample(adapter, image_processor, rng: random.Random, turns: int = 3,
                     vocabulary: int = 300) -> Sample:
    """A synthetic `turns`-turn conversation about a random image: `bos`, the image run, then
    per turn a question and an answer of random words (the answers marked)."""
    return synthetic_prepare(adapter, image_processor, synthetic_draw(rng, turns, vocabulary))


class Prepared(torch.utils.data.Dataset):
    """Samples made when they are asked for, `prepare(source)` for each of `sources` (a drawn
    image, a toy item, a file's record): under several processes each one processes only the
    images of the conversations it trains on, and no process holds every image's pixels."""

    def __init__(self, sources: list, prepare):
        self.sources, self.prepare = sources, prepare

    def __len__(self):
        return len(self.sources)

    def __getitem__(self, index) -> Sample:
        return self.prepare(self.sources[index])


def toy_samples(processor, task: str, count: int, seed: int = 0) -> list[Sample]:
    """`count` training conversations of a toy task (`shapes`: three questions about a drawn
    image), from its training split (never in a question set), made by the toy model's
    processor as any LLaVA-format conversation is."""
    return list(toy_prepared(processor, task, count, seed))


def toy_prepared(processor, task: str, count: int, seed: int = 0) -> Prepared:
    """`toy_samples`, each made when it is asked for."""
    return Prepared(tasks.training_items(task, seed, count),
                    lambda item: conversation_sample(processor, item.image, item.conversations()))


def record_sample(processor, path, images, index: int, record: dict) -> Sample:
    """The sample of record `index` of a LLaVA-format file; `DataError` naming it when it
    cannot be made one."""
    try:
        with Image.open(Path(images) / record["image"]) as opened:
            image = opened.convert("RGB")
        return conversation_sample(processor, image, record["conversations"])
    except (ValueError, OSError) as error:
        raise DataError(f"--data {path} record {index}: {error}") from None


def llava_json_prepared(processor, path, images, records=None) -> Prepared:
    """`llava_json_samples`, each made when it is asked for."""
    records = read_conversations(path, images) if records is None else records
    return Prepared(list(enumerate(records)),
                    lambda source: record_sample(processor, path, images, *source))


def llava_json_samples(processor, path, images, limit: int | None = None, records=None):
    """Samples from a LLaVA-format file (see `read_conversations`): a JSON list of
    `{"image": FILE, "conversations": [...]}`, images under the folder `images`. A record that
    cannot be made a sample raises `DataError` naming it. `records`: the file's records, when
    already read."""
    records = read_conversations(path, images) if records is None else records
    for index, record in enumerate(records[:limit]):
        yield record_sample(processor, path, images, index, record)

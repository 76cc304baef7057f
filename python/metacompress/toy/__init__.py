"""The small vision-language models trained here on the toy tasks (`metacompress.tasks`:
`shapes`), shipped with the package: for evaluating compression where nothing can be downloaded (docs/EVALUATION.md).

    from metacompress import toy
    model, processor = toy.load("shapes")            # LlavaNextForConditionalGeneration + processor
    items = toy.questions("shapes", seed=1, count=50) # held-out images, three questions each
    answers = toy.ask(model, processor, items[0].image, [q.text for q in items[0].questions])
    pmeta = toy.load_pmeta("shapes")                 # P_meta trained on it at keep 0.1

Splits (`metacompress.tasks`): question sets (`questions`) use item seeds >= 0; every
training image (the model's and P_meta's) has a negative item seed, so no question set was
trained on.
"""
from __future__ import annotations

from ..extras import require

require("metacompress.toy", "hf")

from pathlib import Path

import torch

from .. import tasks
from ..tasks import shapes

NAMES = ("shapes",)
WEIGHTS = Path(__file__).parent / "weights"


def _known(name: str):
    if name not in NAMES:
        raise ValueError(f"toy model {name!r}: expected one of {', '.join(NAMES)}")


def folder(name: str) -> Path:
    """The shipped model folder (`config.json`, `model.safetensors`, processor files)."""
    _known(name)
    return WEIGHTS / name


def load(name: str = "shapes"):
    """`(model, processor)` of a shipped toy model, in evaluation mode on the CPU."""
    from transformers import LlavaNextForConditionalGeneration, LlavaNextProcessor
    path = folder(name)
    model = LlavaNextForConditionalGeneration.from_pretrained(path, dtype=torch.float32)
    return model.eval(), LlavaNextProcessor.from_pretrained(path)


def pmeta_path(name: str = "shapes") -> Path:
    """The shipped P_meta weights trained on the toy model (keep 0.1; `pmeta.json` beside
    them is the trainer's sidecar)."""
    return folder(name) / "pmeta.safetensors"


def load_pmeta(name: str = "shapes"):
    from ..torch import PMeta
    return PMeta.load(pmeta_path(name))


def questions(name: str, seed: int, count: int) -> list:
    """A question set: `count` items (`image`, `questions` with `kind`, `text`, `answer`) of
    the task `name`, the same for the same seed (seeds >= 0)."""
    _known(name)
    return tasks.get(name, seed, count)


def training_items(name: str, seed: int, count: int) -> list:
    """`count` training items (negative item seeds, never in a question set)."""
    _known(name)
    return tasks.training_items(name, seed, count)


def prompt(questions_and_answers: list[tuple[str, str | None]]) -> str:
    """The plain LLaVA prompt of a conversation about one image; the last answer `None` ends
    it with `ASSISTANT:` for the model to answer."""
    from ..tasks.conversations import plain_prompt
    messages = []
    for index, (question, answer) in enumerate(questions_and_answers):
        content = ([{"type": "image"}] if index == 0 else []) + [{"type": "text", "text": question}]
        messages.append({"role": "user", "content": content})
        if answer is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return plain_prompt(messages, add_generation_prompt=questions_and_answers[-1][1] is None)


@torch.no_grad()
def ask(model, processor, image, texts: list[str], max_new_tokens: int = 4) -> list[str]:
    """The model's greedy answers (`model.generate`, KV cache) to `texts` about `image`, one
    turn after another, each turn seeing the earlier questions and the model's own answers."""
    answers, turns = [], []
    for text in texts:
        turns.append((text, None))
        inputs = processor(images=[image], text=[prompt(turns)], return_tensors="pt")
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        answer = processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        answers.append(answer)
        turns[-1] = (text, answer)
    return answers


def evaluate(model, processor, items, blank: bool = False) -> dict[str, float]:
    """Accuracy per question type and over all (`all`) of greedy answers (`ask`, three turns
    an image) against the references after `normalise`; `blank`: every image replaced by the
    task's blank image. `chance` is what answering without the image scores."""
    right, count = {}, {}
    for item in items:
        image = shapes.blank() if blank else item.image
        answers = ask(model, processor, image, [q.text for q in item.questions])
        for question, answer in zip(item.questions, answers):
            count[question.kind] = count.get(question.kind, 0) + 1
            right[question.kind] = right.get(question.kind, 0) + (shapes.normalise(answer) == question.answer)
    result = {kind: right[kind] / count[kind] for kind in sorted(count)}
    result["all"] = sum(right.values()) / sum(count.values())
    result["chance"] = shapes.chance([q for item in items for q in item.questions])
    return result


@torch.no_grad()
def forced_accuracy(model, processor, items, reduce=None) -> dict[str, float]:
    """Accuracy per question type and over all of the first answer word, teacher-forced (one
    pass per image over its whole conversation, the reference answers in context; for one-word
    answers the argmax there is greedy decoding's first word). `reduce(tokens, grids)`, when
    given, returns the tokens the language model reads instead of the image's `tokens` (e.g.
    `lambda x, g: pmeta(x, g, keep=0.1)[0]`); the placeholder run is shortened to match."""
    from ..models.adapters import Adapter, Pixels, shorten
    from ..tasks.conversations import llava_messages, plain_prompt
    from .model import answer_mask
    adapter = Adapter(model)
    right, count = {}, {}
    for item in items:
        inputs = processor(images=[item.image], text=[plain_prompt(llava_messages(item.conversations()))],
                           return_tensors="pt")
        ids = inputs["input_ids"][0]
        answer = answer_mask(ids) & (ids != model.generation_config.eos_token_id)
        pixels = Pixels(inputs["pixel_values"], image_sizes=inputs["image_sizes"])
        tokens = adapter.features(pixels)[0]
        if reduce is not None:
            _, grids = adapter.layout(pixels, 0)
            tokens = reduce(tokens.float(), [tuple(g) for g in grids])
            ids, answer = shorten(ids, answer, adapter.image_token_id, tokens.shape[0])
        logits = adapter.logits(ids[None], torch.ones_like(ids)[None], [tokens])[0]
        for question, position in zip(item.questions, answer.nonzero().flatten()):
            count[question.kind] = count.get(question.kind, 0) + 1
            right[question.kind] = right.get(question.kind, 0) + int(logits[position - 1].argmax() == ids[position])
    result = {kind: right[kind] / count[kind] for kind in sorted(count)}
    result["all"] = sum(right.values()) / sum(count.values())
    result["chance"] = shapes.chance([q for item in items for q in item.questions])
    return result

"""The shipped toy task and model (`metacompress.toy`, docs/EVALUATION.md): question sets are
reproducible and their answers balanced (so chance is what the docs say); the processor
expands `<image>` to the tokens the model makes, in the layout the runtime is given; the
trained model answers held-out questions (>= 0.9) and cannot with a blank image (<= chance +
0.1); the shipped P_meta loads and the runtime reduces the model's tokens with it as the
PyTorch twin does."""
import json
from collections import Counter

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import run
from metacompress import toy
from metacompress.adapters import Adapter, Pixels
from metacompress.toy import shapes

GRIDS = [(0, 16, 16, 16), (256, 16, 16, 17)]   # base tile, then the crop with a newline a row


@pytest.fixture(scope="module")
def shapes_model():
    torch.manual_seed(0)
    return toy.load("shapes")


def test_question_sets_are_reproducible_balanced_and_apart_from_training():
    first, again = toy.questions("shapes", 3, 4), toy.questions("shapes", 3, 4)
    for a, b in zip(first, again):
        assert a.image.tobytes() == b.image.tobytes() and a.questions == b.questions
    assert first[0].image.tobytes() != toy.questions("shapes", 4, 1)[0].image.tobytes()
    items = shapes.items(11, 300)
    for item in items:
        assert len(item.questions) == shapes.TURNS
        assert len({q.text.rstrip("?").split()[-1].rstrip("s") for q in item.questions}) == shapes.TURNS
    answers = Counter((q.kind, q.answer) for item in items for q in item.questions)
    kinds = Counter(q.kind for item in items for q in item.questions)
    for (kind, answer), count in answers.items():
        assert abs(count / kinds[kind] - shapes.CHANCE[kind]) < 0.1, (kind, answer, count, kinds[kind])
    with pytest.raises(ValueError, match="seeds >= 0"):
        toy.questions("shapes", -1, 1)
    with pytest.raises(ValueError, match="expected one of"):
        toy.questions("nothing", 0, 1)


def test_the_processor_makes_as_many_image_tokens_as_the_model_in_the_runtimes_layout(shapes_model):
    model, processor = shapes_model
    item = toy.questions("shapes", 0, 1)[0]
    inputs = processor(images=[item.image], text=[toy.prompt([(item.questions[0].text, None)])],
                       return_tensors="pt")
    placeholders = int((inputs["input_ids"] == model.config.image_token_id).sum())
    adapter = Adapter(model)
    pixels = Pixels(inputs["pixel_values"], image_sizes=inputs["image_sizes"])
    n, grids = adapter.layout(pixels, 0)
    assert adapter.features(pixels)[0].shape[0] == placeholders == n == 528
    assert [tuple(g) for g in grids] == GRIDS


def test_the_model_answers_held_out_questions(shapes_model):
    model, processor = shapes_model
    full = toy.evaluate(model, processor, toy.questions("shapes", 1, 40))
    print(f"held-out accuracy, full tokens: {full}")
    assert full["all"] >= 0.9, full


def test_the_model_cannot_answer_without_the_image(shapes_model):
    model, processor = shapes_model
    blank = toy.evaluate(model, processor, toy.questions("shapes", 2, 80), blank=True)
    print(f"blank image: {blank}")
    assert blank["all"] <= blank["chance"] + 0.1, blank


def test_the_shipped_pmeta_reduces_the_models_tokens_in_the_runtime_as_in_the_twin(shapes_model, binary, tmp_path):
    model, processor = shapes_model
    sidecar = json.loads(toy.pmeta_path("shapes").with_suffix(".json").read_text())
    assert sidecar["model"] == "shapes" and sidecar["keep"] == 0.1
    pmeta = toy.load_pmeta("shapes")
    assert pmeta.w_q.shape[0] == model.config.text_config.hidden_size
    item = toy.questions("shapes", 5, 1)[0]
    values = processor.image_processor(images=[item.image], return_tensors="pt")
    features = Adapter(model).features(Pixels(values["pixel_values"], image_sizes=values["image_sizes"]))[0]
    with torch.no_grad():
        ours, _ = pmeta(features.float(), GRIDS, keep=0.1)
    path = tmp_path / "features.safetensors"
    save_file({"features": features.float().contiguous()}, str(path),
              metadata={"grids": json.dumps([list(g) for g in GRIDS])})
    run(binary, "compress", "--weights", toy.pmeta_path("shapes"), "--input", path,
        "--output", tmp_path / "out.safetensors", "--backend", "cpu", "--keep", "0.1")
    theirs = load_file(str(tmp_path / "out.safetensors"))["tokens"]
    assert theirs.shape == ours.shape == (50, 64)
    assert float((theirs - ours).norm() / ours.norm()) < 1e-4

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
from metacompress.models.adapters import Adapter, Pixels
from metacompress.tasks import shapes

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


@torch.no_grad()
def test_the_evaluation_on_the_shipped_model_agrees_with_a_plain_recomputation(shapes_model, tmp_path):
    """`python -m metacompress.evaluate --model shapes --data shapes --weights shapes --methods
    all` on a few held-out images: every requested row, nothing skipped (the toy tower has a
    [CLS] token); `full`'s accuracy is `toy.evaluate`'s (the model's own `generate` on pixel
    values); MetaCompress's and DivPrune's accuracy and KL equal a re-computation by hand (the
    runtime called directly, the placeholder run cut to m, `generate` on embeddings built here,
    the KL from the model's logits over the reference answers' words and `</s>`)."""
    import metacompress as mc
    from metacompress.evaluation import harness as evaluate
    from metacompress.toy.model import answer_mask
    model, processor = shapes_model
    seed, samples, keep = 4, 3, 0.1
    out = tmp_path / "shapes.json"
    assert evaluate.main(["--model", "shapes", "--data", "shapes", "--seed", str(seed), "--samples",
                          str(samples), "--methods", "all", "--keep", str(keep), "--weights", "shapes",
                          "--backend", "cpu", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {row["method"]: row for row in result["rows"]}
    assert [(row["method"], row["keep"]) for row in result["rows"]] == \
        [("full", 1.0)] + [(method, keep) for method in evaluate.METHODS]
    assert not result["skipped"]
    items = toy.questions("shapes", seed, samples)
    assert rows["full"]["accuracy"] == toy.evaluate(model, processor, items)["all"]

    image_id = model.config.image_token_id
    adapter = Adapter(model)

    def by_hand(method):
        compressor = mc.Compressor(toy.pmeta_path("shapes") if method == "metacompress" else None, backend="cpu")
        answers, log_probs = [], []
        for item in items:
            inputs = processor(images=[item.image], text=[toy.prompt([(item.questions[0].text, None)])],
                               return_tensors="pt")
            pixels = Pixels(inputs["pixel_values"], image_sizes=inputs["image_sizes"])
            # The pass the harness reads with --methods all (the [CLS] attention from the same
            # eager pass): DivPrune at scope image meets near-duplicate tokens (base tile and
            # crop), where another attention kernel's last bits can flip its choice.
            tokens = adapter.features_and_attention(pixels)[0][0].float().contiguous()
            if method != "full":
                tokens = compressor.compress(tokens, grids=GRIDS, keep=keep, method=method, seed=seed).tokens

            def embedded(text):
                ids = processor.tokenizer(text, return_tensors="pt")["input_ids"][0]
                at = int((ids == image_id).nonzero()[0])
                ids = torch.cat([ids[:at], torch.full((tokens.shape[0],), image_id), ids[at + 1:]])
                embeds = model.get_input_embeddings()(ids)
                embeds[ids == image_id] = tokens
                return ids, embeds[None]
            turns = []
            for question in item.questions:
                turns.append((question.text, None))
                ids, embeds = embedded(toy.prompt(turns))
                new = model.generate(inputs_embeds=embeds, attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                     max_new_tokens=10, do_sample=False)
                answer = processor.tokenizer.decode(new[0], skip_special_tokens=True).strip()
                answers.append(answer)
                turns[-1] = (question.text, answer)
            ids, embeds = embedded(toy.prompt([(q.text, q.answer) for q in item.questions]))
            logits = model(inputs_embeds=embeds).logits[0].float().log_softmax(-1)
            log_probs.append(logits[answer_mask(ids).nonzero().flatten() - 1])
        return answers, torch.cat(log_probs)

    references = [q.answer for item in items for q in item.questions]
    _, full = by_hand("full")
    for method in ("metacompress", "divprune"):
        answers, reduced = by_hand(method)
        right = sum(evaluate.normalise(a) == evaluate.normalise(r) for a, r in zip(answers, references))
        assert rows[method]["accuracy"] == right / len(references), method
        kl = (full.exp() * (full - reduced)).sum(-1).clamp_min(0).mean()
        assert rows[method]["kl"] == pytest.approx(float(kl), rel=1e-4, abs=1e-7), method
        assert rows[method]["tokens"] == 50

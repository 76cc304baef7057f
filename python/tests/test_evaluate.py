"""python -m metacompress.evaluate (SPEC section 10) on the tiny random-weight models: the
[CLS] attention VisionZip and PruMerge read equals a direct computation from the vision
layer's own projections; the harness runs end to end with every method and writes every
row; its accuracy, agreement and KL equal a plain re-computation (the model's `generate` on
inputs built by hand, the KL from the model's logits); a multi-turn run runs the vision tower
once per image and the runtime once per image and row. Issue 29 (SPEC section 10, v4): every
row carries its intervals, scope, per-family accuracy and difference to MetaCompress of the
same run at the same keep; each method runs at its authors' scope unless --scope says
otherwise; by default a run asks at least 1000 questions."""
import json
import random

import pytest
import torch

import metacompress as mc
from metacompress import tasks
from metacompress.evaluation import harness as evaluate
from metacompress.models import tiny
from metacompress.models.adapters import Adapter
from metacompress.models.inputs import pixels_of, process_image
from metacompress.tasks.synthetic import synthetic_image
from metacompress.torch import PMeta

LLAVA = ("tiny-llava", "tiny-llava-next")


def direct_cls_attention(model, pixels) -> torch.Tensor:
    """Each visual token's [CLS] attention, computed without the model's attention weights:
    the feature layer's input captured by a hook, its [CLS] query against every key by hand
    (softmax(q k^T / sqrt(d_h)), mean over heads); each token the language model reads is
    matched to the patch whose projected hidden state it is (a newline token gets 0)."""
    layers = model.model.vision_tower.encoder.layers
    index = model.config.vision_feature_layer
    layer = layers[index - 1 if index > 0 else len(layers) + index]
    seen = {}

    def before(_, args):
        seen["input"] = args[0]

    def after(_, args, out):
        seen["output"] = out[0] if isinstance(out, tuple) else out

    hooks = [layer.register_forward_pre_hook(before), layer.register_forward_hook(after)]
    try:
        features = Adapter(model).features(pixels)[0]
    finally:
        for hook in hooks:
            hook.remove()
    attention = layer.self_attn
    tiles, length, _ = seen["input"].shape
    normed = layer.layer_norm1(seen["input"])
    query = attention.q_proj(normed[:, :1]).view(tiles, 1, attention.num_heads, attention.head_dim)
    keys = attention.k_proj(normed).view(tiles, length, attention.num_heads, attention.head_dim)
    scores = torch.einsum("tqhc,tkhc->thk", query, keys) * attention.head_dim ** -0.5
    cls = scores.softmax(-1).mean(1)[:, 1:].reshape(-1)                  # (tiles * patches,)
    projected = model.model.multi_modal_projector(seen["output"][:, 1:]).reshape(-1, features.shape[1])
    distance = torch.cdist(features.double(), projected.double())
    nearest = distance.min(1)
    newline = getattr(model.model, "image_newline", None)
    is_newline = (torch.zeros(len(features), dtype=torch.bool) if newline is None
                  else (features - newline).abs().amax(1) == 0)
    assert bool((nearest.values[~is_newline] < 1e-4).all()), "a token that is no patch's projection"
    return torch.where(is_newline, torch.zeros(()), cls[nearest.indices])


@pytest.mark.parametrize("name", LLAVA)
def test_cls_attention(name, seed):
    model, image_processor = tiny.build(name)
    adapter = Adapter(model)
    rng = random.Random(seed)
    pixels = pixels_of(process_image(image_processor, synthetic_image(rng)))
    n, _ = adapter.layout(pixels, 0)
    direct = direct_cls_attention(model, pixels)
    before = adapter.features(pixels)[0]
    features, attention = adapter.features_and_attention(pixels)
    assert attention[0].shape == (n,), f"{name} seed {seed}"
    assert bool((attention[0] >= 0).all())
    torch.testing.assert_close(attention[0], direct, rtol=1e-5, atol=1e-6, msg=f"{name} seed {seed}")
    torch.testing.assert_close(features[0], before, rtol=1e-5, atol=1e-5)
    if name == "tiny-llava-next":   # the newline tokens: one per row of the crops' grid
        assert int((attention[0] == 0).sum()) >= 1


def test_no_cls_in_qwen2_vl():
    model, _ = tiny.build("tiny-qwen2-vl")
    with pytest.raises(ValueError, match="CLS"):
        Adapter(model).features_and_attention(None)
    with pytest.raises(mc.UsageError, match="CLS"):
        evaluate.ReducedModel(model, mc.Compressor(None, backend="cpu"), method="prumerge")


def test_normalise():
    assert evaluate.normalise("The Red.") == "red"
    assert evaluate.normalise("  an  apple, on a table!") == "apple on table"
    assert evaluate.normalise("Yes") == evaluate.normalise("yes.") == "yes"
    assert evaluate.normalise("left-side") == "left side"
    assert evaluate.normalise("") == ""


def test_refusals(tmp_path):
    for argv, message in ((["--methods", "pool,sharpen"], "unknown method"),
                          (["--keep", "0"], "--keep"), (["--keep", "x"], "--keep"),
                          (["--methods", "metacompress"], "--weights"),
                          (["--data", "nothing"], "--images"), (["--turns", "0"], "--turns")):
        args = evaluate.arguments(["--model", "tiny-llava", "--data", "synthetic", "--methods", "pool", *argv])
        with pytest.raises(mc.UsageError, match=message):
            evaluate.check(args)
    assert evaluate.main(["--model", "tiny-llava", "--data", "synthetic", "--keep", "2"]) == 2


# --- end to end --------------------------------------------------------------------------------

ROW_KEYS = {"method", "keep", "tokens", "accuracy", "agreement", "kl", "prefill_s",
            "accuracy_ci", "kl_ci", "scope", "accuracy_by_family"}


@pytest.mark.parametrize("name", tiny.NAMES)
def test_end_to_end(name, tmp_path, capsys):
    out = tmp_path / "eval.json"
    status = evaluate.main(["--model", name, "--data", "synthetic", "--samples", "1", "--turns", "2",
                            "--methods", "all", "--keep", "0.25,0.5", "--weights", "init", "--dc", "16",
                            "--max-new-tokens", "3", "--backend", "cpu", "--json", str(out),
                            "--plot", str(tmp_path / "eval.png")])
    assert status == 0
    result = json.loads(out.read_text())
    assert {"model", "data", "samples", "seed", "rows"} <= set(result)
    assert (result["model"], result["data"], result["samples"], result["seed"]) == (name, "synthetic", 1, 0)
    requested = [("full", 1.0)] + [(m, k) for m in evaluate.METHODS for k in (0.25, 0.5)]
    got = [(row["method"], row["keep"]) for row in result["rows"]]
    skipped = [(row["method"], row["keep"]) for row in result["skipped"]]
    if name.startswith("tiny-qwen") or name == "tiny-llava-onevision":   # no [CLS] token
        assert skipped == [(m, k) for m in ("visionzip", "prumerge") for k in (0.25, 0.5)]
        assert all("CLS" in row["reason"] for row in result["skipped"])
    else:
        assert not skipped
    assert got == [row for row in requested if row not in skipped]
    for row in result["rows"]:
        assert ROW_KEYS <= set(row), row
        assert ("vs_metacompress" in row) == (row["method"] != "metacompress"), row
        assert 0 <= row["accuracy"] <= 1 and 0 <= row["agreement"] <= 1 and row["kl"] >= 0
        assert row["prefill_s"] > 0 and row["tokens"] > 0
    full = result["rows"][0]
    assert full["agreement"] == 1 and full["kl"] == 0
    assert all(row["tokens"] < full["tokens"] for row in result["rows"][1:])
    printed = capsys.readouterr().out
    assert all(method in printed for method in evaluate.METHODS)
    assert (tmp_path / "eval.png").read_bytes()[:4] == b"\x89PNG"


# --- against a plain re-computation ------------------------------------------------------------

def plain_prompt(turns) -> str:
    """LLaVA-1.5's plain format, written out: `USER: <image>\\nQ ASSISTANT: A</s>USER: ...`."""
    text = ""
    for index, (question, answer) in enumerate(turns):
        text += "USER: " + ("<image>\n" if index == 0 else "") + question + " ASSISTANT:"
        if answer is not None:
            text += " " + answer + "</s>"
    return text


def embeds(model, ids, tokens):
    """The language model's input: token embeddings with the placeholder run replaced by the
    image's tokens."""
    embedded = model.get_input_embeddings()(ids)
    embedded[ids == model.config.image_token_id] = tokens.to(embedded.dtype)
    return embedded


def plain_row(model, processor, items, method, keep, weights, seed, max_new_tokens):
    """Answers and per-answer-token log-probabilities of one row, by hand."""
    compressor = mc.Compressor(weights if method == "metacompress" else None, backend="cpu")
    adapter = Adapter(model)
    answers, log_probs, counts = [], [], []
    for item in items:
        pixels = pixels_of(process_image(processor.image_processor, item.image))
        features = model.model.get_image_features(pixel_values=pixels.pixel_values,
                                                  image_sizes=pixels.image_sizes).pooler_output[0]
        if method == "full":
            tokens = features
        else:
            _, grids = adapter.layout(pixels, 0)
            attention = direct_cls_attention(model, pixels) if method in ("visionzip", "prumerge") else None
            tokens = compressor.compress(features.contiguous(), grids=grids, keep=keep, method=method,
                                         seed=seed, attention=attention).tokens
        counts.append(tokens.shape[0])
        turns = []
        for question in item.questions:
            turns.append((question.text, None))
            ids = torch.tensor([processor.tokens(plain_prompt(turns), tokens.shape[0])])
            new = model.generate(inputs_embeds=embeds(model, ids, tokens), attention_mask=torch.ones_like(ids),
                                 max_new_tokens=max_new_tokens, do_sample=False)
            answer = processor.decode(new[0]).strip()
            answers.append(answer)
            turns[-1] = (question.text, answer)
        reference = [(question.text, question.answer) for question in item.questions]
        ids = torch.tensor([processor.tokens(plain_prompt(reference), tokens.shape[0])])
        logits = model(inputs_embeds=embeds(model, ids, tokens)).logits[0].float().log_softmax(-1)
        for turn in range(len(reference)):
            start = len(processor.tokens(plain_prompt(reference[:turn] + [(reference[turn][0], None)]),
                                         tokens.shape[0]))
            end = len(processor.tokens(plain_prompt(reference[:turn + 1]), tokens.shape[0]))
            log_probs.append(logits[start - 1:end - 1])
    return answers, torch.cat(log_probs), sum(counts) / len(counts)


@torch.no_grad()
def test_against_plain_recomputation(tmp_path, seed):
    """Rows of tiny-llava-next on a LLaVA-format file whose first answers are the full model's
    own (so accuracy is not all zero) equal the plain re-computation."""
    name, turns, new_tokens, keep = "tiny-llava-next", 2, 4, 0.25
    model, image_processor = tiny.build(name)
    processor = tiny.TinyProcessor(model, image_processor)
    items = tasks.get("synthetic", seed, 2)
    for item in items:
        item.questions = item.questions[:turns]
    weights = tmp_path / "pmeta.safetensors"
    PMeta.init(64, 16, seed=seed).save(weights)
    full_answers, _, _ = plain_row(model, processor, items, "full", 1.0, None, seed, new_tokens)
    records = []
    for index, item in enumerate(items):
        item.questions[0].answer = full_answers[index * turns]          # right for full, turn 1
        item.image.save(tmp_path / f"{index}.png")
        conversations = []
        for number, question in enumerate(item.questions):
            conversations += [{"from": "human", "value": ("<image>\n" if number == 0 else "") + question.text},
                              {"from": "gpt", "value": question.answer}]
        records.append({"image": f"{index}.png", "conversations": conversations})
    data = tmp_path / "questions.json"
    data.write_text(json.dumps(records))
    methods = ["metacompress", "pool", "random", "tome", "visionzip", "prumerge"]
    args = evaluate.arguments(["--model", name, "--data", str(data), "--images", str(tmp_path),
                               "--methods", ",".join(methods), "--keep", str(keep), "--weights",
                               str(weights), "--seed", str(seed), "--turns", str(turns),
                               "--max-new-tokens", str(new_tokens), "--backend", "cpu"])
    result = evaluate.evaluate(args, progress=False)
    rows = {row["method"]: row for row in result["rows"]}
    references = [question.answer for item in items for question in item.questions]
    _, full_log_probs, full_tokens = plain_row(model, processor, items, "full", 1.0, None, seed, new_tokens)
    assert rows["full"]["accuracy_turn1"] == 1.0
    for method in ["full", *methods]:
        answers, log_probs, tokens = plain_row(model, processor, items, method, keep, weights, seed, new_tokens)
        same = lambda a, b: evaluate.normalise(a) == evaluate.normalise(b)
        accuracy = sum(map(same, answers, references)) / len(references)
        agreement = sum(map(same, answers, full_answers)) / len(references)
        kl = (full_log_probs.exp() * (full_log_probs - log_probs)).sum(-1).clamp_min(0).mean()
        context = f"{method} seed {seed}"
        assert rows[method]["accuracy"] == accuracy, context
        assert rows[method]["agreement"] == agreement, context
        assert rows[method]["tokens"] == tokens, context
        assert rows[method]["kl"] == pytest.approx(float(kl), rel=1e-4, abs=1e-7), context
    assert rows["full"]["tokens"] == full_tokens


# --- multi-turn: one vision pass per image, one reduction per image and row ----------------------

def test_each_image_reduced_once(monkeypatch):
    model, image_processor = tiny.build("tiny-llava")
    monkeypatch.setattr(evaluate, "load_model", lambda *_: (model, tiny.TinyProcessor(model, image_processor)))
    compressions, tower = [], []
    compress = mc.Compressor.compress_sharing       # what metacompress.hf calls, once an image
    monkeypatch.setattr(mc.Compressor, "compress_sharing",
                        lambda self, *a, **k: compressions.append(k["method"]) or compress(self, *a, **k))
    hook = model.model.vision_tower.register_forward_hook(lambda *_: tower.append(1))
    generations = []
    generate = model.generate
    monkeypatch.setattr(model, "generate", lambda *a, **k: generations.append(1) or generate(*a, **k))
    try:
        args = evaluate.arguments(["--model", "tiny-llava", "--data", "synthetic", "--samples", "3",
                                   "--turns", "3", "--methods", "pool,tome,prumerge", "--keep", "0.25,0.5",
                                   "--max-new-tokens", "2", "--backend", "cpu"])
        result = evaluate.evaluate(args, progress=False)
    finally:
        hook.remove()
    assert len(tower) == 3                       # once per image, for every row
    assert sorted(compressions) == sorted(["pool", "tome", "prumerge"] * 2 * 3)   # rows x images
    assert len(generations) == 7 * 3 * 3 + 1     # rows x images x turns, and one warm-up turn
    assert result["questions"] == 9
    assert all("accuracy_later" in row for row in result["rows"])


# --- statistics (issue 29) ---------------------------------------------------------------------

AUTHORS_SCOPE = {"metacompress": "image", "divprune": "image", "random": "image", "pool": "grid",
                 "sample": "grid", "tome": "grid", "visionzip": "grid", "prumerge": "grid"}

STATISTICS_MODELS = ("tiny-llava", "shapes")
"""The models the statistics run end to end on; a shipped toy model is asked its own task."""


def task_of(model: str) -> str:
    return "synthetic" if model.startswith("tiny-") else "shapes"


def check_statistics(result: dict, families: set):
    """Every row's intervals hold its value; per-family accuracies make up the accuracy; every
    method but MetaCompress is compared with MetaCompress of the run at the same keep."""
    rows = result["rows"]
    assert result["confidence"] == 0.95 and result["resamples"] >= 1000
    metacompress = {row["keep"]: row for row in rows if row["method"] == "metacompress"}
    for row in rows:
        context = f"{result['model']} {row['method']} {row['keep']}"
        assert ROW_KEYS <= set(row), context
        for key in ("accuracy", "kl"):
            low, high = row[f"{key}_ci"]
            assert low <= row[key] + 1e-12 and row[key] <= high + 1e-12, context
        assert row["scope"] == (None if row["method"] == "full" else AUTHORS_SCOPE[row["method"]]), context
        by_family = row["accuracy_by_family"]
        assert set(by_family) == families, context
        if row["method"] == "metacompress":
            assert "vs_metacompress" not in row and row["trained"] is (result["weights"] != "init")
            continue
        vs = row["vs_metacompress"]
        if row["keep"] not in metacompress:
            assert vs is None, context
            continue
        reference = metacompress[row["keep"]]
        assert vs["accuracy_diff"] == pytest.approx(row["accuracy"] - reference["accuracy"], abs=1e-12), context
        assert vs["kl_diff"] == pytest.approx(row["kl"] - reference["kl"], abs=1e-9), context
        for key in ("accuracy_diff", "kl_diff"):
            low, high = vs[f"{key}_ci"]
            assert low <= vs[key] + 1e-12 and vs[key] <= high + 1e-12, context
        assert 0 <= vs["mcnemar_p"] <= 1, context
    assert result["rows"][0]["kl_ci"] == [0.0, 0.0]                  # full against itself


@pytest.mark.parametrize("name", STATISTICS_MODELS)
def test_statistics_end_to_end(name, tmp_path, capsys):
    data, samples = task_of(name), 3
    out = tmp_path / "eval.json"
    status = evaluate.main(["--model", name, "--data", data, "--samples", str(samples), "--turns", "2",
                            "--methods", "full,metacompress,pool,random,divprune,tome", "--keep", "0.25,0.5",
                            "--weights", "init", "--dc", "16", "--max-new-tokens", "3", "--backend", "cpu",
                            "--json", str(out), "--plot", str(tmp_path / "eval.png")])
    assert status == 0
    result = json.loads(out.read_text())
    assert result["metacompress_trained"] is False
    questions = [question for item in tasks.get(data, 0, samples) for question in item.questions[:2]]
    families = {getattr(question, "family", None) for question in questions} - {None}
    check_statistics(result, families)
    for row in result["rows"]:
        if row["accuracy_by_family"]:
            counts = {family: sum(getattr(q, "family", None) == family for q in questions) for family in families}
            total = sum(row["accuracy_by_family"][family] * counts[family] for family in families)
            assert total / len(questions) == pytest.approx(row["accuracy"], abs=1e-12)
    printed = capsys.readouterr().out
    assert "metacompress (init)" in printed and "against metacompress (init, untrained)" in printed
    assert f"{result['rows'][1]['accuracy']:.3f} [" in printed
    assert (tmp_path / "eval.png").read_bytes()[:4] == b"\x89PNG"


def test_each_method_runs_at_its_authors_scope_unless_told(monkeypatch):
    model, image_processor = tiny.build("tiny-llava-next")
    monkeypatch.setattr(evaluate, "load_model", lambda *_: (model, tiny.TinyProcessor(model, image_processor)))
    scopes = []
    compress = mc.Compressor.compress_sharing
    monkeypatch.setattr(mc.Compressor, "compress_sharing",
                        lambda self, *a, **k: scopes.append((k["method"], k["scope"])) or compress(self, *a, **k))
    for asked in (None, "grid", "image"):
        scopes.clear()
        argv = ["--model", "tiny-llava-next", "--data", "synthetic", "--samples", "1", "--turns", "1",
                "--methods", "pool,random,tome,divprune,prumerge", "--keep", "0.5", "--max-new-tokens", "1",
                "--backend", "cpu"] + ([] if asked is None else ["--scope", asked])
        result = evaluate.evaluate(evaluate.arguments(argv), progress=False)
        # --scope image changes nothing: the per-grid methods stay per grid.
        expected = {method: "grid" for method in AUTHORS_SCOPE} if asked == "grid" else AUTHORS_SCOPE
        assert {row["method"]: row["scope"] for row in result["rows"][1:]} == \
            {method: expected[method] for method in ("pool", "random", "tome", "divprune", "prumerge")}
        assert dict(scopes) == {row["method"]: row["scope"] for row in result["rows"][1:]}, asked
        assert all(row["vs_metacompress"] is None for row in result["rows"])   # no metacompress row


def test_a_default_run_asks_at_least_1000_questions(tmp_path):
    for turns, images in ((3, 334), (2, 500), (1, 1000)):
        args = evaluate.arguments(["--model", "tiny-llava", "--data", "synthetic", "--turns", str(turns)])
        assert args.samples is None
        items = evaluate.items_for(args)
        assert len(items) == images, turns
        assert sum(min(len(item.questions), turns) for item in items) >= 1000
    # A task whose images hold fewer questions than --turns asks for: more images.
    args = evaluate.arguments(["--model", "tiny-llava", "--data", "synthetic", "--turns", "5"])
    items = evaluate.items_for(args)
    assert sum(min(len(item.questions), 5) for item in items) >= 1000
    assert sum(min(len(item.questions), 5) for item in list(items)[:-1]) < 1000
    # A file with fewer: all of it.
    record = {"image": "0.png", "conversations": [{"from": "human", "value": "<image>\nQ?"},
                                                  {"from": "gpt", "value": "A"}]}
    tasks.get("synthetic", 0, 1)[0].image.save(tmp_path / "0.png")
    (tmp_path / "data.json").write_text(json.dumps([record] * 4))
    args = evaluate.arguments(["--model", "tiny-llava", "--data", str(tmp_path / "data.json"),
                               "--images", str(tmp_path)])
    assert len(evaluate.items_for(args)) == 4

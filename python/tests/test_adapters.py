"""The adapters on the six tiny models (real transformers code paths, random weights):
the full-token path reproduces the model's own logits; identity P gives KL ~ 0 and a permuted
identity does not (the LLaVA-NeXT layout is the model's order); each family's layout matches
the tokens the model makes (and the Rust runtime's presets); multi-turn answer spans; a
padded batch gives the mean of its samples' losses."""
import json
import random

import pytest
import torch

from conftest import run
from metacompress import layouts
from metacompress.models import tiny
from metacompress.models.adapters import Adapter, shorten
from metacompress.models.inputs import collate
from metacompress.training.data import synthetic_sample
from metacompress.training.distill import Weights, answer_kl, losses, predicting
from metacompress.torch import PMeta


@pytest.fixture(scope="module", params=tiny.NAMES)
def family(request):
    model, processor = tiny.build(request.param)
    return request.param, Adapter(model), processor


def batch_of(family, seed, count=3):
    _, adapter, processor = family
    rng = random.Random(seed)
    return collate([synthetic_sample(adapter, processor, rng) for _ in range(count)])


def test_the_full_token_path_reproduces_the_models_logits(family, seed):
    name, adapter, _ = family
    batch = batch_of(family, seed)
    features = adapter.features(batch.pixels)
    for index, tokens in enumerate(features):
        assert tokens.shape[0] == adapter.layout(batch.pixels, index)[0], f"{name} seed {seed}"
    ours = adapter.logits(batch.input_ids, batch.attention_mask, features, batch.pixels.image_grid_thw)
    own = adapter.model_logits(batch.input_ids, batch.attention_mask, batch.pixels)
    valid = batch.attention_mask.bool()
    assert (ours - own)[valid].abs().max() <= 1e-5, f"{name} seed {seed}"


def test_identity_gives_no_divergence_and_a_permuted_identity_does(family, seed):
    name, adapter, _ = family
    batch = batch_of(family, seed, count=1)
    features = adapter.features(batch.pixels)
    thw = batch.pixels.image_grid_thw
    teacher = adapter.logits(batch.input_ids, batch.attention_mask, features, thw)
    rows = predicting(batch.answer[0])
    levels = features.levels   # Qwen3-VL's deepstack levels (none for the other families)
    same = adapter.logits(batch.input_ids, batch.attention_mask, [f.clone() for f in features], thw,
                          levels=[[t.clone() for t in level] for level in levels])
    assert answer_kl(teacher[0][rows], same[0][rows]) < 1e-6, f"{name} seed {seed}"
    n = features[0].shape[0]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    while torch.equal(order, torch.arange(n)):
        order = torch.randperm(n)
    permuted = adapter.logits(batch.input_ids, batch.attention_mask, [features[0][order]], thw,
                              levels=[[level[0][order]] for level in levels])
    assert answer_kl(teacher[0][rows], permuted[0][rows]) > 1e-4, f"{name} seed {seed}"


def test_layouts_match_the_rust_presets(binary):
    for width, height in [(672, 672), (1000, 667), (667, 1000), (1, 1000), (1920, 1080), (337, 2011)]:
        n, grids = layouts.llava_next(width, height)
        out = json.loads(run(binary, "layout", f"llava-next:{width}x{height}", "--json"))
        assert out == {"n": n, "grids": [list(g) for g in grids]}, (width, height)
    for width, height in [(672, 672), (1000, 667), (3000, 2000), (4000, 4000), (777, 1333), (50, 50)]:
        n, grids = layouts.llava_onevision(width, height)
        out = json.loads(run(binary, "layout", f"llava-onevision:{width}x{height}", "--json"))
        assert out == {"n": n, "grids": [list(g) for g in grids]}, (width, height)
    for frames in [1, 8]:
        n, grids = layouts.llava_onevision_video(frames)
        out = json.loads(run(binary, "layout", f"llava-onevision-video:{frames}", "--json"))
        assert out == {"n": n, "grids": [list(g) for g in grids]}, frames
    for family, rule in [("qwen2-vl", layouts.qwen2_vl), ("qwen2.5-vl", layouts.qwen2_5_vl),
                         ("qwen3-vl", layouts.qwen3_vl)]:
        for t, h, w in [(1, 28, 42), (3, 4, 6)]:
            n, grids = rule(t, h, w)
            out = json.loads(run(binary, "layout", f"{family}:{t}x{h}x{w}", "--json"))
            assert out == {"n": n, "grids": [list(g) for g in grids]}, family


def test_every_turns_answer_is_found_and_shortening_keeps_them():
    model, processor = tiny.build("tiny-llava")
    adapter = Adapter(model)
    sample = synthetic_sample(adapter, processor, random.Random(7), turns=3)
    spans = torch.diff(sample.answer.int(), prepend=torch.zeros(1, dtype=torch.int)).eq(1).sum()
    assert spans == 3
    ids, answer = shorten(sample.input_ids, sample.answer, adapter.image_token_id, 4)
    assert (ids == adapter.image_token_id).sum() == 4
    assert torch.equal(ids[answer], sample.input_ids[sample.answer])


def test_a_padded_batch_gives_the_mean_of_its_samples_losses(family, seed):
    name, adapter, processor = family
    rng = random.Random(seed)
    samples = [synthetic_sample(adapter, processor, rng) for _ in range(3)]
    pmeta = PMeta.init(adapter.width, 16, pos=(4, 4), seed=seed % 1000)
    weights = Weights(keep=0.25)
    with torch.no_grad():
        together = losses(adapter, pmeta, collate(samples), weights)
        alone = [losses(adapter, pmeta, collate([s]), weights) for s in samples]
    for key in ("pred", "entropy", "collapse"):
        mean = sum(float(a[key]) for a in alone) / len(alone)
        assert abs(float(together[key]) - mean) <= 1e-5 * max(1.0, abs(mean)), f"{name} {key} seed {seed}"

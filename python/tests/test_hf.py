"""metacompress.hf on the six tiny models (real transformers code paths, random weights):
method "full" is the model's own generation token for token; with a reduction the prompt
holds exactly m visual tokens, greedy generation with the KV cache equals a step-by-step
greedy loop over the adapters' forward (no cache), runs are deterministic, and a second turn
reuses the reduced tokens without running the vision tower again."""
import random

import pytest
import torch

import metacompress as mc
from conftest import run
from metacompress.models import tiny
from metacompress.models.adapters import QWEN, Adapter, Pixels
from metacompress.tasks.synthetic import synthetic_image
from metacompress.hf import ReducedModel


@pytest.fixture(scope="module", params=tiny.NAMES)
def family(request):
    model, processor = tiny.build(request.param)
    return request.param, model, processor


@pytest.fixture(scope="module")
def weights(binary, tmp_path_factory):
    path = tmp_path_factory.mktemp("hf") / "pmeta.safetensors"
    run(binary, "init", "--dim", 64, "--dc", 16, "--pos", "4x4", "--seed", 3, "--output", path)
    return path


def prompt(family, seed, words=5):
    """A processor's outputs for one random image and a prompt: bos, the image's placeholder
    run at full length, random words."""
    _, model, processor = family
    adapter = Adapter(model)
    rng = random.Random(seed)
    out = processor(images=[synthetic_image(rng)], return_tensors="pt")
    pixels = Pixels(out["pixel_values"], out.get("image_sizes"), out.get("image_grid_thw"))
    n, _ = adapter.layout(pixels, 0)
    ids = torch.tensor([[1] + [adapter.image_token_id] * n + [rng.randint(3, 200) for _ in range(words)]])
    inputs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=out["pixel_values"])
    for key in ("image_sizes", "image_grid_thw"):
        if key in out:
            inputs[key] = out[key]
    return inputs


def own_generate(model, inputs, **kwargs):
    extra = {}
    if model.config.model_type in QWEN:
        extra["mm_token_type_ids"] = (inputs["input_ids"] == model.config.image_token_id).int()
    return model.generate(**inputs, **extra, do_sample=False, **kwargs)


@pytest.fixture
def vision_calls():
    """`count(model)`: a list that grows by one per forward pass of the model's vision tower
    (the hooks go when the test ends)."""
    handles = []

    def count(model):
        tower = getattr(model.model, "vision_tower", None) or model.model.visual
        calls = []
        handles.append(tower.register_forward_hook(lambda *_: calls.append(1)))
        return calls

    yield count
    for handle in handles:
        handle.remove()


def test_full_is_the_models_own_generation(family, seed):
    name, model, _ = family
    for turn_seed in (seed, seed + 1):
        inputs = prompt(family, turn_seed)
        own = own_generate(model, inputs, max_new_tokens=8)
        ours = ReducedModel(model, method="full").generate(**inputs, max_new_tokens=8, do_sample=False)
        assert torch.equal(ours.sequences, own), f"{name} seed {turn_seed}"


@pytest.mark.parametrize("method", ["metacompress", "pool", "tome", "divprune"])
def test_reduced_generation(family, weights, seed, method, vision_calls):
    name, model, _ = family
    context = f"{name} {method} seed {seed}"
    compressor = mc.Compressor(weights if method == "metacompress" else None, backend="cpu")
    keep = random.Random(seed).choice([0.1, 0.25, 0.5])
    reduced = ReducedModel(model, compressor, keep=keep, method=method, seed=seed)
    inputs = prompt(family, seed)
    calls = vision_calls(model)
    # Random weights may pick the image placeholder as a word: never a real model's choice,
    # and a second image run in the text.
    image_token = model.config.image_token_id
    greedy = dict(do_sample=False, suppress_tokens=[image_token])
    first = reduced.generate(**inputs, max_new_tokens=6, **greedy)
    assert len(calls) == 1, context
    # The prompt holds exactly m visual tokens: the runtime's m for this image's layout.
    adapter = reduced.adapter
    pixels = Pixels(inputs["pixel_values"], inputs.get("image_sizes"), inputs.get("image_grid_thw"))
    n, grids = adapter.layout(pixels, 0)
    features = adapter.features(pixels)[0]
    expected = compressor.compress(features.contiguous(), grids=[tuple(g) for g in grids], keep=keep,
                                   method=method, seed=seed)
    m = sum(hq * wq for hq, wq in expected.queries)
    prompt_length = inputs["input_ids"].shape[1] - n + m
    assert first.sequences.shape[1] == prompt_length + first.new_tokens.shape[1], context
    assert int((first.sequences[0, :prompt_length] == adapter.image_token_id).sum()) == m, context
    assert torch.equal(first.images.tokens[0], expected.tokens), context
    # Qwen3-VL's deepstack levels: reduced with the same P (Y_k = P X_k).
    levels = adapter.features(pixels).levels
    assert len(first.images.levels) == len(levels) == adapter.deepstack_levels, context
    if levels:
        shared = compressor.compress(features.contiguous(), grids=[tuple(g) for g in grids], keep=keep,
                                     method=method, seed=seed, projection=True)
        for k, level in enumerate(levels):
            assert first.images.levels[k][0].shape == expected.tokens.shape, context
            assert torch.allclose(first.images.levels[k][0], shared.projection @ level[0], atol=1e-6), context
    # Greedy with the KV cache == a step-by-step greedy loop over the adapters' forward.
    ids = first.sequences[:, :prompt_length]
    for _ in range(first.new_tokens.shape[1]):
        logits = adapter.logits(ids, torch.ones_like(ids), first.images.tokens, first.images.grid_thw,
                                levels=first.images.levels)
        logits[:, -1, image_token] = -float("inf")
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(ids, first.sequences), context
    # Deterministic.
    again = reduced.generate(**inputs, max_new_tokens=6, **greedy)
    assert torch.equal(again.sequences, first.sequences), context
    # A second turn: the first turn's sequence and a question, reusing the reduced tokens.
    question = torch.tensor([[5, 17, 23, 9]])
    follow_up = torch.cat([first.sequences, question], dim=1)
    calls.clear()
    second = reduced.generate(input_ids=follow_up, images=first.images, max_new_tokens=5, **greedy)
    assert not calls, f"{context}: the vision tower ran again"
    assert torch.equal(second.sequences[:, :follow_up.shape[1]], follow_up), context
    # The same turn from pixels (the placeholder run at full length) gives the same tokens.
    full_run = torch.cat([inputs["input_ids"], first.new_tokens, question], dim=1)
    fresh = dict(inputs, input_ids=full_run, attention_mask=torch.ones_like(full_run))
    from_pixels = reduced.generate(**fresh, max_new_tokens=5, **greedy)
    assert torch.equal(from_pixels.sequences, second.sequences), context


def test_refusals(family):
    name, model, _ = family
    if name.startswith("tiny-qwen") or name == "tiny-llava-onevision":   # no [CLS] token
        with pytest.raises(mc.UsageError, match="CLS"):
            ReducedModel(model, mc.Compressor(None, backend="cpu"), method="visionzip")
    with pytest.raises(mc.UsageError):
        ReducedModel(model, None, method="pool")
    reduced = ReducedModel(model, mc.Compressor(None, backend="cpu"), method="pool", keep=0.5)
    inputs = prompt(family, 0)
    with pytest.raises(mc.UsageError, match="pixel_values"):
        reduced.generate(input_ids=inputs["input_ids"], max_new_tokens=2)
    images = reduced.reduce(inputs["pixel_values"], inputs.get("image_sizes"), inputs.get("image_grid_thw"))
    text_only = torch.tensor([[1, 5, 6, 7]])
    with pytest.raises(mc.UsageError, match="0 image placeholder runs"):
        reduced.generate(input_ids=text_only, images=images, max_new_tokens=2)
    with pytest.raises(mc.UsageError, match="batch of 2"):
        reduced.generate(input_ids=inputs["input_ids"].repeat(2, 1), images=images, max_new_tokens=2)


@pytest.mark.parametrize("method", ["visionzip", "prumerge"])
def test_attention_methods(family, seed, method, vision_calls):
    """VisionZip and PruMerge (LLaVA families): the vision tower runs once for the features
    and the [CLS] attention together, and the runtime reads that attention."""
    name, model, _ = family
    if name.startswith("tiny-qwen") or name == "tiny-llava-onevision":
        pytest.skip("no [CLS] token (test_refusals)")
    compressor = mc.Compressor(None, backend="cpu")
    reduced = ReducedModel(model, compressor, keep=0.25, method=method)
    inputs = prompt(family, seed)
    calls = vision_calls(model)
    out = reduced.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert len(calls) == 1, f"{name} seed {seed}"
    pixels = Pixels(inputs["pixel_values"], inputs.get("image_sizes"), inputs.get("image_grid_thw"))
    features, attention = reduced.adapter.features_and_attention(pixels)
    _, grids = reduced.adapter.layout(pixels, 0)
    expected = compressor.compress(features[0].contiguous(), grids=grids, keep=0.25, method=method,
                                   attention=attention[0])
    assert torch.equal(out.images.tokens[0], expected.tokens), f"{name} seed {seed}"
    with pytest.raises(mc.UsageError, match="attention"):
        reduced.reduce_features(pixels, features)

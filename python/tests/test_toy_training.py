"""The toy model's training script (`metacompress.toy.train_model`): its patch labels agree
with what the questions say about the image, its attention targets point at the words and
tokens they name, and a short run writes a model folder that loads, the same bytes twice
for one seed."""
import torch
from transformers import LlavaNextForConditionalGeneration

from metacompress.toy import model as toy_model
from metacompress.tasks import shapes
from metacompress.toy import train_model

SEEDS = [-11, -12, -13, -14, -15, -16, -17, -18]   # training seeds (negative), as the script uses


def test_patch_labels_agree_with_the_answers():
    checked = {"count": 0, "side": 0, "colour": 0}
    for seed in SEEDS * 4:
        item, labels, centres = shapes.render(seed * 7)
        patches = train_model.patch_labels(labels, centres)
        cover, count, side = patches[:, 0], patches[:, 3], patches[:, 4]
        for question in item.questions:
            kind = next(i for i, name in enumerate(shapes.SHAPES) if name in question.text)
            mine = (cover > 0) & ((cover - 1) // 4 == kind)
            if not mine.any():
                continue
            if question.kind == "count":
                assert (count[mine] == shapes.NUMBERS.index(question.answer)).all(), (seed, question)
            elif question.kind == "side":
                assert (side[mine] == (question.answer == "right")).all(), (seed, question)
            elif question.kind == "colour":
                colour = tuple(shapes.COLOURS).index(question.answer)
                assert ((cover[mine] - 1) % 4 == colour).all(), (seed, question)
            checked[question.kind] = checked.get(question.kind, 0) + 1
        assert (count[cover == 0] == -100).all() and (side[cover == 0] == -100).all()
    assert min(checked.values()) > 0, checked


def test_attention_targets_name_the_right_words_and_tokens():
    processor = toy_model.processor()
    words = {index: word for word, index in toy_model.vocabulary().items()}
    items = []
    batch, labels = train_model.batch_of(processor, SEEDS[:4], items)
    targets = train_model.look_targets(batch, labels, items)
    assert len(targets) == 3 * len(items)
    for (row, position, tokens, shape_word, first_word), question in zip(
            targets, [q for item in items for q in item.questions]):
        ids = batch["input_ids"][row].tolist()
        assert words[ids[position + 1]] == question.answer
        assert words[ids[position]] == ":" and words[ids[position - 1]] == "ASSISTANT"
        assert words[ids[shape_word]] == question.text.rstrip("?").split()[-1]
        assert words[ids[first_word]] == question.text.split()[0]
        names = {words[ids[t]] for t in tokens.tolist()}
        assert names == ({"<s>"} if question.answer == "no" else {"<image>"}), (question, names)


def test_a_short_run_writes_a_model_that_loads_the_same_twice(tmp_path):
    outputs = []
    for name in ("a", "b"):
        folder = tmp_path / name
        train_model.main(["--output", str(folder), "--warmup-steps", "2", "--warmup-batch", "2",
                          "--steps", "2", "--batch", "2", "--eval-every", "0", "--eval-items", "2"])
        outputs.append((folder / "model.safetensors").read_bytes())
    assert outputs[0] == outputs[1]
    model = LlavaNextForConditionalGeneration.from_pretrained(tmp_path / "a")
    reference = toy_model.build(0)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in reference.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), reference.parameters()))

"""Train a toy model from scratch on its task, with all its visual tokens, on the CPU.

    python -m metacompress.toy.train_model --output python/metacompress/toy/weights/shapes

Two stages, every image generated on the fly from the seed (no image is seen twice):
1. warm-up: the vision tower alone learns to label each 8 x 8 patch of the base tile with
   the shape and colour covering most of it (and the shape kind alone again, on the patches
   a shape covers: inside a shape a patch is one flat colour whatever the shape, so the kind
   is learnt from the outline around it and needs the extra weight), the shape whose centre
   it holds, the half of the image it is in and, on a shape, how many of its kind the image
   holds and the half its centre is in (linear heads on its last layer; not shipped), which
   teaches a from-scratch ViT what a shape is far faster than answers do, and puts what
   every question type asks on each token of the shape asked about;
2. answers: the projector and language model (the tower stays as the warm-up left it unless
   `--train-tower`) learn cross-entropy on the answer words and `</s>` of all three turns of
   each image's conversation, plus guidance of where to look (`--look-weight`, `-log` of the
   attention weight on the targets, averaged over the guided heads), at the position that
   predicts each answer: in the first layer, head 0 on the question's shape word and head 1
   on its first word (which says its type); in the last layer (`--look-heads`, from head 0)
   on the visual tokens (base tile and crop) of the shape the question names, or the begin
   token `<s>` when there is no such shape. Without it the two-hop reading (question word ->
   answer position -> the right visual tokens among 528) stays at chance for hundreds of
   steps.

Deterministic for a given seed and thread count (`--threads`; torch's CPU kernels sum in an
order that depends on it). Writes the model folder (`config.json`, `model.safetensors`,
`generation_config.json`, the processor's and tokenizer's files) that `metacompress.toy.load`
reads, and `training.json` with the settings, losses and held-out accuracy (teacher-forced:
the first answer word, on 200 held-out images); every `--eval-every` steps it prints the
accuracy on 32 held-out images and saves the folder.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import model as toy_model
from ..models.inputs import pad
from ..tasks import shapes
from ..tasks.conversations import llava_messages, plain_prompt

CLASSES = 1 + 4 * len(shapes.SHAPES)   # what covers a patch: background, then shape x colour
CENTRES = 1 + len(shapes.SHAPES)       # whose centre a patch holds: none, then a shape
SIDES = 2                              # the half of the image a patch is in
COUNTS = 3                             # on a shape: how many of its kind the image holds (1-3)
OBJECT_SIDES = 2                       # on a shape: the half its centre is in
HEADS = CLASSES + CENTRES + SIDES + COUNTS + OBJECT_SIDES


def arguments(argv=None):
    parser = argparse.ArgumentParser(prog="python -m metacompress.toy.train_model",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, help="the model folder to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", help="a model folder this script wrote, to train further (its training "
                                         "images are not seen again when --seed differs)")
    parser.add_argument("--warmup-steps", type=int, default=2000, help="vision-only steps [2000]")
    parser.add_argument("--warmup-batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=600, help="whole-model steps [600]")
    parser.add_argument("--batch", type=int, default=8, help="images (three questions each) a step [8]")
    parser.add_argument("--warmup-lr", type=float, default=3e-3)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--train-tower", action="store_true",
                        help="train the vision tower in stage 2 too (with the patch labels); by default it "
                             "stays as the warm-up left it: trained with the answers at the language model's "
                             "learning rate it forgets the shape kinds")
    parser.add_argument("--dense-weight", type=float, default=0.5,
                        help="weight of the patch labels in stage 2 (with --train-tower)")
    parser.add_argument("--look-weight", type=float, default=1.0,
                        help="weight of guiding attention of the last layer to the named shape")
    parser.add_argument("--look-heads", type=int, default=4,
                        help="how many of the last layer's heads are guided (from head 0) [4]")
    parser.add_argument("--eval-items", type=int, default=200, help="held-out images measured at the end")
    parser.add_argument("--eval-every", type=int, default=100,
                        help="print held-out accuracy (32 images) and save the model every N steps")
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args(argv)


def patch_labels(labels: np.ndarray, centres) -> torch.Tensor:
    """Per patch (row-major, as the tower's tokens): the class covering most of it; the shape
    whose centre it holds (0: none), which makes objects countable token by token; the half of
    the image it is in; and on a patch a shape covers (else -100, ignored), how many shapes of
    its kind the image holds (minus one) and the half its own centre (the nearest centre of
    its kind) is in. The last two put what count and side questions ask on every token of the
    shape, as colour is: the language model reads all three the same way."""
    grid, size = shapes.SIZE // toy_model.PATCH, toy_model.PATCH
    blocks = labels.reshape(grid, size, grid, size).transpose(0, 2, 1, 3)
    blocks = blocks.reshape(grid * grid, -1)
    cover = np.stack([(blocks == c).sum(1) for c in range(CLASSES)], axis=1).argmax(1)
    centre = np.zeros(grid * grid, dtype=np.int64)
    for shape, x, y in centres:
        centre[int(y) // size * grid + int(x) // size] = 1 + shape
    side = np.tile((np.arange(grid) >= grid // 2).astype(np.int64), grid)
    count = np.full(grid * grid, -100, dtype=np.int64)
    object_side = np.full(grid * grid, -100, dtype=np.int64)
    middle = (np.arange(grid * grid) % grid + 0.5) * size, (np.arange(grid * grid) // grid + 0.5) * size
    for kind in range(len(shapes.SHAPES)):
        own = [(x, y) for shape, x, y in centres if shape == kind]
        covered = (cover > 0) & ((cover - 1) // 4 == kind)
        if not own or not covered.any():
            continue
        count[covered] = min(len(own), COUNTS) - 1
        distance = [np.hypot(middle[0] - x, middle[1] - y) for x, y in own]
        nearest = np.asarray(own)[np.argmin(distance, axis=0), 0]
        object_side[covered] = (nearest >= shapes.SIZE / 2)[covered]
    return torch.from_numpy(np.stack([cover, centre, side, count, object_side], axis=1))


def encode(processor, item: shapes.Item) -> dict:
    """One conversation's tensors: the processor's output and the answer mask."""
    text = plain_prompt(llava_messages(item.conversations()))
    out = processor(images=[item.image], text=[text], return_tensors="pt")
    out["answer"] = toy_model.answer_mask(out["input_ids"][0])[None]
    return out


def batch_of(processor, seeds, items: list | None = None) -> tuple[dict, torch.Tensor]:
    rendered = [shapes.render(s) for s in seeds]
    encoded = [encode(processor, item) for item, _, _ in rendered]
    batch = {k: pad([e[k][0] for e in encoded], toy_model.PAD if k == "input_ids" else 0)
             for k in ("input_ids", "attention_mask", "answer")}   # right-padded
    batch["pixel_values"] = torch.cat([e["pixel_values"] for e in encoded])
    batch["image_sizes"] = torch.cat([e["image_sizes"] for e in encoded])
    labels = torch.stack([patch_labels(lab, centres) for _, lab, centres in rendered])
    if items is not None:
        items.extend(item for item, _, _ in rendered)
    return batch, labels


def schedule(step: int, total: int, warm: int = 50) -> float:
    return min(1.0, (step + 1) / warm) * 0.5 * (1 + math.cos(math.pi * step / total))


def look_targets(batch: dict, labels: torch.Tensor, items) -> list[tuple[int, int, torch.Tensor, int, int]]:
    """`(row, position, tokens, shape_word, first_word)` per answer: the position whose logits
    predict the answer word; the tokens its last layer is guided to: the visual tokens (base
    tile and crop) covered by the shape the question names, or the begin token `<s>` when "is
    there a ...?" has none; and the positions of the question's shape word and first word
    (which says the question's type), for the first layer."""
    grid = shapes.SIZE // toy_model.PATCH
    colon, begin = toy_model.vocabulary()[":"], torch.tensor([0])
    found = []
    for row, item in enumerate(items):
        ids = batch["input_ids"][row]
        start = int((ids == toy_model.IMAGE).nonzero()[0])
        words = (batch["answer"][row] & (ids != toy_model.EOS)).nonzero().flatten()
        cover = labels[row, :, 0]
        for question, position in zip(item.questions, words.tolist()):
            shape = next(i for i, name in enumerate(shapes.SHAPES)
                         if name in question.text.rstrip("?").split()[-1])
            patches = ((cover > 0) & ((cover - 1) // 4 == shape)).nonzero().flatten()
            rows, cols = patches // grid, patches % grid
            tokens = torch.cat([start + patches, start + grid * grid + rows * (grid + 1) + cols])
            if tokens.numel() == 0:
                tokens = begin
            first = position - 4   # ... SHAPE ? ASSISTANT : ANSWER
            while int(ids[first - 1]) not in (colon, toy_model.IMAGE):
                first -= 1
            found.append((row, position - 1, tokens, position - 4, first))
    return found


class Look:
    """A language-model layer's attention weights (a forward hook; eager attention), for
    guiding its heads at the answer positions."""
    def __init__(self, layer):
        self.weights = None
        layer.self_attn.register_forward_hook(lambda module, args, out: setattr(self, "weights", out[1]))

    def loss(self, targets, heads: slice) -> torch.Tensor:
        """Mean over answers and `heads` of -log(the attention paid to each answer's tokens),
        `targets`: `(row, position, tokens)`."""
        rows = torch.tensor([row for row, _, _ in targets])
        positions = torch.tensor([position for _, position, _ in targets])
        chosen = torch.zeros(len(targets), self.weights.shape[-1])
        for index, (_, _, tokens) in enumerate(targets):
            chosen[index, tokens] = 1
        # One gather of the answer positions' rows (indexing per answer would make the backward
        # pass fill a zero tensor of the whole attention map per answer).
        weights = self.weights[rows, :, positions][:, heads]   # answers x heads x keys
        return -torch.log((weights * chosen[:, None]).sum(-1) + 1e-6).mean()


class Tap:
    """Keeps the vision tower's last output (a forward hook) for the patch-label loss."""
    def __init__(self, tower):
        self.output = None
        tower.register_forward_hook(lambda module, args, out: setattr(self, "output", out.last_hidden_state))


def patch_loss(head, hidden: torch.Tensor, labels: torch.Tensor, tiles: int) -> torch.Tensor:
    """Cross-entropy of the patch labels on the base tile's tokens (the class token dropped),
    plus the shape kind alone on the patches a shape covers: most patches are background, and
    a patch inside a shape is one flat colour whatever the shape, so the kind (learnt only from
    the outline around it) needs the extra weight."""
    base = hidden.reshape(labels.shape[0], tiles, *hidden.shape[1:])[:, 0, 1:]
    scores = head(base).flatten(0, 1)
    labels = labels.flatten(0, 1)
    covered = labels[:, 0] > 0
    kinds = scores[covered, 1:CLASSES].unflatten(-1, (len(shapes.SHAPES), 4)).logsumexp(-1)
    return (F.cross_entropy(scores[:, :CLASSES], labels[:, 0])
            + F.cross_entropy(scores[:, CLASSES:CLASSES + CENTRES], labels[:, 1])
            + F.cross_entropy(scores[:, CLASSES + CENTRES:CLASSES + CENTRES + SIDES], labels[:, 2])
            + F.cross_entropy(scores[covered, -COUNTS - OBJECT_SIDES:-OBJECT_SIDES], labels[covered, 3])
            + F.cross_entropy(scores[covered, -OBJECT_SIDES:], labels[covered, 4])
            + F.cross_entropy(kinds, (labels[covered, 0] - 1) // 4))   # the shape kind again, on shapes only


@torch.no_grad()
def accuracy(model, processor, seeds, blank: bool = False) -> dict[str, float]:
    """Held-out accuracy per question type (teacher-forced: the argmax word at each answer,
    which for one-word answers is greedy decoding's first word)."""
    right, count = {}, {}
    for start in range(0, len(seeds), 8):
        batch, _ = batch_of(processor, seeds[start:start + 8])
        if blank:
            blank_values = processor.image_processor(images=[shapes.blank()], return_tensors="pt")["pixel_values"]
            batch["pixel_values"] = blank_values.expand_as(batch["pixel_values"]).clone()
        answer = batch.pop("answer")
        logits = model(**batch).logits
        for row, seed in enumerate(seeds[start:start + 8]):
            item = shapes.item(seed)
            words = answer[row] & (batch["input_ids"][row] != toy_model.EOS)
            positions = words.nonzero().flatten()
            for question, position in zip(item.questions, positions):
                guess = int(logits[row, position - 1].argmax())
                count[question.kind] = count.get(question.kind, 0) + 1
                right[question.kind] = right.get(question.kind, 0) + (guess == int(batch["input_ids"][row, position]))
    result = {kind: right[kind] / count[kind] for kind in sorted(count)}
    result["all"] = sum(right.values()) / sum(count.values())
    return result


def main(argv=None):
    args = arguments(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    random.seed(args.seed)
    started = time.time()
    model = toy_model.build(args.seed)
    if args.resume:
        resume(model, Path(args.resume))
    processor = toy_model.processor()
    tower = model.model.vision_tower
    width = model.config.vision_config.hidden_size
    head = torch.nn.Linear(width, HEADS)
    tap = Tap(tower)
    # Training images have negative item seeds (-1 - k - 10^9 seed); question sets use seeds >= 0.
    next_seed = iter(range(-1 - 10 ** 9 * args.seed, -10 ** 9 * (args.seed + 1), -1))
    history = {"warmup": [], "answers": []}

    # Stage 1: patch labels, the vision tower alone on the base tile.
    parameters = list(tower.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=args.warmup_lr, weight_decay=0.01)
    model.train()
    progress = tqdm(range(args.warmup_steps), desc="warm-up (patch labels)", dynamic_ncols=True)
    for step in progress:
        for group in optimizer.param_groups:
            group["lr"] = args.warmup_lr * schedule(step, args.warmup_steps)
        seeds = [next(next_seed) for _ in range(args.warmup_batch)]
        rendered = [shapes.render(s) for s in seeds]
        values = processor.image_processor(images=[item.image for item, _, _ in rendered],
                                           return_tensors="pt")["pixel_values"]
        labels = torch.stack([patch_labels(lab, centres) for _, lab, centres in rendered])
        tower(pixel_values=values[:, 0])
        loss = patch_loss(head, tap.output, labels, 1)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        history["warmup"].append(loss.item())
        progress.set_postfix(loss=f"{loss.item():.3f}")

    if args.warmup_steps:
        save(model, processor, Path(args.output), {"settings": vars(args), "step": 0})   # the tower, for --resume

    # Stage 2: answers: the language model and projector (the tower too with --train-tower,
    # then with the patch labels), and where to look.
    model.set_attn_implementation("eager")   # attention weights for the guidance
    first_layer, last_layer = (Look(model.model.language_model.layers[i]) for i in (0, -1))
    tower.requires_grad_(args.train_tower)
    parameters = [p for p in model.parameters() if p.requires_grad]
    parameters += list(head.parameters()) if args.train_tower else []
    optimizer = torch.optim.AdamW(parameters, lr=args.lr, weight_decay=0.01)
    progress = tqdm(range(args.steps), desc="answers", dynamic_ncols=True)
    for step in progress:
        for group in optimizer.param_groups:
            group["lr"] = args.lr * schedule(step, args.steps)
        items = []
        batch, labels = batch_of(processor, [next(next_seed) for _ in range(args.batch)], items)
        guides = look_targets(batch, labels, items)
        answer = batch.pop("answer")
        logits = model(**batch).logits
        rows = torch.cat([answer[:, 1:], answer.new_zeros(answer.shape[0], 1)], dim=1)   # predicting rows
        targets = batch["input_ids"][answer]
        answers = F.cross_entropy(logits[rows].float(), targets)
        dense = (patch_loss(head, tap.output, labels, batch["pixel_values"].shape[1])
                 if args.train_tower else torch.zeros(()))
        looking = (last_layer.loss([(r, p, tokens) for r, p, tokens, _, _ in guides], slice(0, args.look_heads))
                   + first_layer.loss([(r, p, torch.tensor([word])) for r, p, _, word, _ in guides], slice(0, 1))
                   + first_layer.loss([(r, p, torch.tensor([word])) for r, p, _, _, word in guides], slice(1, 2)))
        loss = answers + args.dense_weight * dense + args.look_weight * looking
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        values = [answers.item(), dense.item(), looking.item()]
        history["answers"].append(values)
        progress.set_postfix(answers=f"{values[0]:.3f}", patches=f"{values[1]:.3f}", look=f"{values[2]:.2f}")
        if args.eval_every and (step + 1) % args.eval_every == 0:
            model.eval()
            progress.write(f"step {step + 1}: held-out {accuracy(model, processor, list(range(32)))}")
            save(model, processor, Path(args.output), {"settings": vars(args), "step": step + 1})
            model.train()

    model.eval()
    model.set_attn_implementation("sdpa")
    held_out = list(range(args.eval_items))   # item seeds >= 0: never trained on
    full = accuracy(model, processor, held_out)
    blank = accuracy(model, processor, held_out, blank=True)
    minutes = (time.time() - started) / 60
    print(f"held-out accuracy (teacher-forced first word), full tokens: {full}")
    print(f"blank image: {blank}")
    print(f"trained in {minutes:.1f} min")
    record = {"settings": vars(args), "minutes": round(minutes, 1), "threads": args.threads,
              "torch": torch.__version__, "held_out_full": full, "held_out_blank": blank,
              "loss_warmup_first_last": [history["warmup"][0], history["warmup"][-1]] if history["warmup"] else None,
              "loss_answers_first_last": [history["answers"][0], history["answers"][-1]] if history["answers"] else None}
    save(model, processor, Path(args.output), record)


def resume(model, folder: Path):
    """Loads a model folder's weights into `model`; the word embeddings and output rows are
    matched by word, so a vocabulary that changed (templates reworded) keeps what it shares."""
    from transformers import LlavaNextForConditionalGeneration, PreTrainedTokenizerFast
    state = LlavaNextForConditionalGeneration.from_pretrained(folder).state_dict()
    old = PreTrainedTokenizerFast.from_pretrained(folder).get_vocab()
    new = toy_model.vocabulary()
    own = model.state_dict()
    for name in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
        rows = own[name].clone()
        for word, index in new.items():
            if word in old:
                rows[index] = state[name][old[word]]
        state[name] = rows
    model.load_state_dict(state)


def save(model, processor, output: Path, record: dict):
    """The model folder: weights, configs, processor and tokenizer files, `training.json`."""
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output)
    processor.save_pretrained(output)
    (output / "training.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()

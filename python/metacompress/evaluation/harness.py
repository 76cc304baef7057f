"""Does the model still answer? (SPEC section 10) A vision-language model answers questions
about images with each method's reduced tokens in place of the full ones:

    python -m metacompress.evaluate --model tiny-llava-next --data synthetic --samples 8 \\
        --methods all --keep 0.1,0.25 --weights init --json eval.json --plot eval.png
    python -m metacompress.evaluate --model llava-hf/llava-v1.6-vicuna-7b-hf \\
        --data gqa.json --images gqa/images --methods full,metacompress,tome --keep 0.1 \\
        --weights pmeta.safetensors --turns 1 --device cuda --dtype bfloat16

Rows: `full` (the model's own tokens) first, then every method at every keep. Each image goes
through the vision tower once for all rows; each row reduces it once (`metacompress.hf`, the
native runtime: one implementation of every method) for all of its questions (`--turns`), which
are asked one after another in one conversation (each turn sees the earlier questions and the
model's own answers), answered greedily by the model's `generate` with its KV cache.

Per row (docs/EVALUATION.md, "The harness"):
- `accuracy`: greedy answers equal to the reference after `normalise` (lower case, punctuation
  and the articles a/an/the removed, spaces collapsed: GQA/VQA-style exact match);
  `accuracy_turn1` / `accuracy_later`: the same over first turns / later turns;
- `agreement`: normalised answers equal to the full-token model's for the same question;
- `kl`: mean over the reference answers' tokens (each turn's answer and its end token, as the
  conversation renders them) of KL(full || reduced) between the next-token distributions,
  teacher-forced: one pass over the whole conversation with the reference answers;
- `tokens`: mean visual tokens the language model read per image;
- `prefill_s`: mean seconds of the language model's first pass of each `generate` call (the
  decoder stack on the prompt; not the vision tower, the reduction or the sampling);
- `scope`: the scope the method ran at (its authors' unless `--scope` says otherwise:
  `mc.method_scope`; None for `full`);
- `accuracy_ci`, `kl_ci`: 95 % paired-bootstrap intervals (images resampled, the same
  resamples for every row: `statistics`); `accuracy_by_family`: accuracy per question family
  (`{}` when the questions have none); `vs_metacompress`: this row minus MetaCompress of the
  same run at the same keep, with intervals and McNemar's exact p (None where there is no such
  row; absent from MetaCompress's own rows).

`--samples` defaults to enough images for 1000 questions (`QUESTIONS`), so that the intervals
are narrow enough to tell methods apart. `table` and `plot` are in `report`.

Under `accelerate launch` (or `torchrun`) the images are sharded across the processes (image
`i` to process `i mod N`), each image's measurements gathered to the first process, which
sums them in image order: the table and JSON are the ones a single process gives (timings
aside), printed and written once. A failure in any process stops all of them.
"""
from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .. import processes, tasks, toy
from ..commands import CommandFailure, CommandUsage, Parser, one_line, run
from ..files import Outputs, check_distinct, check_output
from ..models import tiny
from ..models.adapters import NO_CLS, shorten
from ..models.inputs import conversation_sample, pixels_of, render_chat
from ..models.reduced import ATTENTION, ReducedModel
from ..runtime import Compressor, UsageError, method_scope
from ..tasks.conversations import DataError, llava_messages
from . import statistics
from .report import plot, table

METHODS = ("metacompress", "pool", "sample", "random", "tome", "divprune", "visionzip", "prumerge")
"""Every reduction method, in the order `--methods all` gives them (after `full`)."""

ARTICLES = {"a", "an", "the"}

QUESTIONS = 1000
"""Questions a run asks by default (`--samples` unset): at least this many, where the data
has them."""


def normalise(answer: str) -> str:
    """An answer as compared with the reference: lower case, every character that is not a
    letter, digit or space made a space, the articles a/an/the removed, words joined by one
    space ("The Red." -> "red")."""
    words = re.sub(r"[^\w\s]|_", " ", answer.lower()).split()
    return " ".join(word for word in words if word not in ARTICLES)


# --- arguments -------------------------------------------------------------------------------

def arguments(argv=None):
    parser = Parser(prog="python -m metacompress.evaluate", description=__doc__.split("\n\n")[0],
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True,
                        help="a shipped model (tiny-llava, tiny-llava-next, tiny-qwen2-vl, a toy "
                             "model), a local path or a hub id")
    parser.add_argument("--data", required=True,
                        help=f"a shipped task ({', '.join(tasks.names())}; generated from --seed) "
                             "or a LLaVA-format JSON file (with --images)")
    parser.add_argument("--images", help="the folder a JSON file's images are in")
    parser.add_argument("--methods", default="all",
                        help=f"comma-separated: full, {', '.join(METHODS)}; or all [all]")
    parser.add_argument("--keep", default="0.1", help="comma-separated keep ratios in (0, 1] [0.1]")
    parser.add_argument("--weights",
                        help="P_meta for metacompress: a .safetensors file, a shipped name (a toy "
                             "model's), or init (the paper's untrained initialisation for the "
                             "model's width: metacompress init --dim D --dc C)")
    parser.add_argument("--dc", type=int, default=256, help="--weights init: d_c (at most d) [256]")
    parser.add_argument("--samples", type=int,
                        help=f"images [enough for {QUESTIONS} questions: ceil({QUESTIONS} / --turns) "
                             "where every image has --turns questions; or all a JSON file holds]")
    parser.add_argument("--seed", type=int, default=0,
                        help="a shipped task's question set; the random method's draws; the "
                             "bootstrap's resamples [0]")
    parser.add_argument("--turns", type=int, default=3,
                        help="questions per image, asked in one conversation, the image reduced "
                             "once for all of them (fewer where an image has fewer) [3]")
    parser.add_argument("--max-new-tokens", type=int, default=10, help="per answer [10]")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--plot", help="plot accuracy and KL against tokens kept, with their 95 %% "
                                       "intervals, here (.png, .pdf or .svg)")
    parser.add_argument("--device", default="auto", help="the model's: cpu, cuda, ... [auto]")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                        help="the model's [float32]")
    parser.add_argument("--backend", default="auto",
                        help="the runtime's: auto, cpu, reference, vulkan, metal, dx12, gl [auto]")
    parser.add_argument("--scope", choices=("image", "grid"),
                        help="the scope every method is asked for [each its authors': image for "
                             "metacompress, divprune and random; grid for the others, which run "
                             "per grid whatever is asked]")
    return parser.parse_args(argv)


@dataclass
class Plan:
    methods: list[str]   # full first
    keeps: list[float]
    records: list | None = None   # a JSON file's, checked


def check(args) -> Plan:
    """The arguments checked before any model is loaded."""
    names = [name.strip() for name in args.methods.split(",") if name.strip()]
    every = names == ["all"]
    if every:
        names = ["full", *METHODS]
    for name in names:
        if name not in ("full", *METHODS):
            raise UsageError(f"--methods: unknown method {name!r}; expected full, "
                             f"{', '.join(METHODS)} or all")
    methods = ["full"] + [name for name in dict.fromkeys(names) if name != "full"]
    try:
        keeps = [float(value) for value in args.keep.split(",") if value.strip()]
    except ValueError:
        raise UsageError(f"--keep {args.keep}: expected comma-separated numbers in (0, 1]") from None
    if not keeps or not all(0 < keep <= 1 for keep in keeps):
        raise UsageError(f"--keep {args.keep}: expected comma-separated numbers in (0, 1]")
    if "metacompress" in methods and args.weights is None and not every:
        raise UsageError("method metacompress needs --weights (a P_meta file, a shipped name, or init)")
    for flag, value in (("--samples", args.samples), ("--turns", args.turns),
                        ("--max-new-tokens", args.max_new_tokens), ("--dc", args.dc)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} {value}: expected at least 1")
    if args.data not in tasks.names() and not args.images:
        raise UsageError(f"--data {args.data} is not a shipped task ({', '.join(tasks.names())}); "
                         "a JSON file needs --images")
    plan = Plan(methods, list(dict.fromkeys(keeps)))
    check_run(args, plan)
    return plan


PLOT_FORMATS = (".png", ".pdf", ".svg")
"""What `--plot` writes, by its extension."""


def check_run(args, plan: Plan) -> None:
    """The rest of what is checked before any model loads: numbers, the device, the model
    path, the data (its records and images) and the outputs (FORMATS.md "Writing outputs":
    not an input, not a folder, a known extension, a writable folder, not each other)."""
    if args.samples is not None:   # None: enough images for QUESTIONS questions
        tasks.check_count(args.samples)
    if not 0 <= args.seed < 2 ** 63:
        raise UsageError(f"--seed {args.seed}: expected 0 <= seed < 2^63")
    if args.device != "auto":
        try:
            torch.device(args.device)
        except (RuntimeError, ValueError):
            raise UsageError(f"--device {args.device!r} is not a torch device; expected cpu, cuda, "
                             "cuda:1, mps, ... or auto") from None
    shipped = args.model in tiny.NAMES + toy.NAMES
    if not shipped and (Path(args.model).exists() or args.model.startswith((".", "/", "~"))):
        folder = Path(args.model).expanduser()
        if not folder.is_dir():
            raise UsageError(f"--model {args.model}: " + ("is a file; expected a model folder"
                                                         if folder.exists() else "no such folder"))
    inputs = []
    if args.data not in tasks.names():
        plan.records = tasks.read_conversations(args.data, args.images)
        inputs.append(("--data", args.data))
        inputs += [("image", Path(args.images) / record["image"])
                   for record in plan.records[:args.samples]]
    if args.weights not in (None, "init", *toy.NAMES):
        if not Path(args.weights).is_file():
            raise UsageError(f"--weights {args.weights}: no such file (or a shipped name, or init)")
        inputs.append(("--weights", args.weights))
    if args.json:
        check_output("--json", args.json, inputs)
    if args.plot:
        check_output("--plot", args.plot, inputs, suffixes=PLOT_FORMATS)
    check_distinct([(flag, path) for flag, path in (("--json", args.json), ("--plot", args.plot))
                    if path])


def load_model(name: str, dtype: torch.dtype, device: str):
    """`(model, processor)`: a shipped model (the tiny models with `tiny.TinyProcessor`, the
    toy models) or one from a path or hub id (`AutoModelForImageTextToText`, `AutoProcessor`)."""
    if name in tiny.NAMES:
        model, image_processor = tiny.build(name)
        processor = tiny.TinyProcessor(model, image_processor)
    elif name in toy.NAMES:
        model, processor = toy.load(name)
    else:
        from transformers import AutoModelForImageTextToText, AutoProcessor
        try:
            model = AutoModelForImageTextToText.from_pretrained(name, dtype=dtype)
            processor = AutoProcessor.from_pretrained(name)
        except Exception as error:   # transformers raises many types for a model it cannot load
            raise CommandFailure(f"--model {name}: cannot load it as a vision-language model "
                                 f"({one_line(error)})") from None
    return model.to(device=device, dtype=dtype).eval(), processor


def weights_file(spec: str | None, width: int, dc: int, seed: int, folder: Path) -> Path | None:
    """The P_meta file of `--weights`: a file, a toy model's shipped P_meta, or `init` (the
    paper's initialisation for width `width`, `PMeta.init`'s recipe of `metacompress init --dim
    width --dc dc --seed seed`, written into `folder`)."""
    if spec is None:
        return None
    if spec == "init":
        from ..torch import PMeta
        path = folder / "pmeta-init.safetensors"
        PMeta.init(width, min(dc, width), seed=seed).save(path)
        return path
    if spec in toy.NAMES:
        return toy.pmeta_path(spec)
    path = Path(spec)
    if not path.is_file():
        raise UsageError(f"--weights {spec}: no such file (or a shipped name, or init)")
    return path


# --- one row ---------------------------------------------------------------------------------

@dataclass
class Row:
    """One method at one keep, and what it has measured so far."""
    method: str
    keep: float
    reduced: ReducedModel | None = None
    skipped: str | None = None
    scope: str | None = None                           # the scope it ran at (None: full)
    trained: bool | None = None                        # metacompress: False with --weights init
    images: int = 0
    tokens: int = 0
    right: list[int] = field(default_factory=list)     # per turn
    asked: list[int] = field(default_factory=list)     # per turn
    agree: int = 0
    prefill: list[float] = field(default_factory=list)
    # question by question and image by image, for the intervals (statistics.Outcomes)
    answers_right: list[bool] = field(default_factory=list)
    answers_image: list[int] = field(default_factory=list)
    answers_family: list = field(default_factory=list)
    image_kl: list[float] = field(default_factory=list)          # summed over its answer tokens
    image_kl_tokens: list[int] = field(default_factory=list)

    def count(self, turn: int, right: bool, family=None):
        while len(self.asked) <= turn:
            self.asked.append(0)
            self.right.append(0)
        self.asked[turn] += 1
        self.right[turn] += int(right)
        self.answers_right.append(bool(right))
        self.answers_image.append(self.images)
        self.answers_family.append(family)

    def outcomes(self) -> statistics.Outcomes:
        return statistics.Outcomes(np.array(self.answers_right, dtype=bool),
                                   np.array(self.answers_image, dtype=int), np.array(self.image_kl),
                                   np.array(self.image_kl_tokens), list(self.answers_family))

    def add(self, measured: Measured):
        """One image's measurements (images in their order, so that sums and the intervals'
        per-image records are the same however many processes measured them)."""
        self.image_kl.append(measured.kl)
        self.image_kl_tokens.append(measured.kl_tokens)
        self.tokens += measured.tokens
        self.prefill += measured.prefill
        for turn, (right, agree, family) in enumerate(zip(measured.right, measured.agree, measured.family)):
            self.count(turn, right, family)
            self.agree += int(agree)
        self.images += 1

    def summary(self) -> dict:
        asked, right = sum(self.asked), sum(self.right)
        kl, kl_tokens = sum(self.image_kl), sum(self.image_kl_tokens)
        out = {"method": self.method, "keep": self.keep, "tokens": self.tokens / self.images,
               "accuracy": right / asked, "agreement": self.agree / asked,
               "kl": kl / kl_tokens if kl_tokens else 0.0,
               "prefill_s": sum(self.prefill) / len(self.prefill),
               "accuracy_turn1": self.right[0] / self.asked[0], "scope": self.scope}
        if self.trained is not None:
            out["trained"] = self.trained
        if len(self.asked) > 1:
            out["accuracy_later"] = sum(self.right[1:]) / sum(self.asked[1:])
        return out


@dataclass
class Measured:
    """What one row measured on one image: the unit the processes gather and `Row.add` sums."""
    index: int                 # the image's place in the question set
    tokens: int
    kl: float                  # summed over the reference answers' tokens
    kl_tokens: int
    prefill: list[float]       # per turn
    right: list[bool]          # per turn
    agree: list[bool]          # per turn
    family: list               # per turn: each question's family (None where the task has none)


class PrefillTimer:
    """Times the language model's first forward pass after `arm()`: the prefill of the next
    `generate` call (the decoder stack on the whole prompt; the vision tower, the reduction
    and the head are outside it). Forward hooks on `model.model.language_model`; CUDA is
    synchronised at both ends."""

    def __init__(self, model):
        module = model.model.language_model
        self.cuda = next(model.parameters()).device.type == "cuda"
        self.armed, self.start, self.seconds = False, None, None
        self.handles = [module.register_forward_pre_hook(self._before),
                        module.register_forward_hook(self._after)]

    def _sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def _before(self, *_):
        if self.armed:
            self._sync()
            self.start = time.perf_counter()

    def _after(self, *_):
        if self.armed and self.start is not None:
            self._sync()
            self.seconds = time.perf_counter() - self.start
            self.armed, self.start = False, None

    def arm(self):
        self.armed, self.start, self.seconds = True, None, None

    def take(self) -> float:
        if self.seconds is None:
            raise RuntimeError("the language model did not run")
        return self.seconds

    def close(self):
        for handle in self.handles:
            handle.remove()


def decode(processor, ids) -> str:
    tokenizer = getattr(processor, "tokenizer", None) or processor
    return tokenizer.decode(ids, skip_special_tokens=True).strip()


def converse(reduced: ReducedModel, processor, image, questions, images, timer: PrefillTimer,
             max_new_tokens: int, device) -> tuple[list[str], list[float]]:
    """The model's greedy answers to `questions` about `image`, one turn after another (each
    turn's prompt holds the earlier questions and the model's own answers), every turn reading
    the same reduced `images`; and each turn's prefill seconds."""
    turns, answers, seconds = [], [], []
    for index, question in enumerate(questions):
        turns.append({"from": "human", "value": ("<image>\n" if index == 0 else "") + question.text})
        text = render_chat(processor, llava_messages(turns), add_generation_prompt=True)
        inputs = processor(images=[image], text=[text], return_tensors="pt")
        ids = inputs["input_ids"].to(device)
        mask = inputs.get("attention_mask")
        timer.arm()
        out = reduced.generate(input_ids=ids, attention_mask=None if mask is None else mask.to(device),
                               images=images, max_new_tokens=max_new_tokens, do_sample=False)
        seconds.append(timer.take())
        answers.append(decode(processor, out.new_tokens[0]))
        turns.append({"from": "gpt", "value": answers[-1]})
    return answers, seconds


def answer_log_probs(reduced: ReducedModel, sample, images) -> torch.Tensor:
    """Log-probabilities (float32, `answer tokens x vocabulary`) of the next token at each
    reference answer token of `sample` (teacher-forced), the image reading `images`."""
    adapter = reduced.adapter
    m = sum(tokens.shape[0] for tokens in images.tokens)
    ids, answer = shorten(sample.input_ids, sample.answer, adapter.image_token_id, m)
    device = images.tokens[0].device
    ids = ids.to(device)[None]
    logits = adapter.logits(ids, torch.ones_like(ids), images.tokens, images.grid_thw,
                            levels=images.levels or None)[0]
    positions = answer.nonzero().flatten().to(device) - 1
    return torch.log_softmax(logits[positions].float(), dim=-1)


# --- the evaluation --------------------------------------------------------------------------

def items_for(args, plan: Plan | None = None) -> tasks.Items:
    """The question set, each image made or read as it is reached: `--samples` images, or by
    default enough for `QUESTIONS` questions (at most `--turns` an image), or all there are."""
    if args.data in tasks.names():
        def get(count):
            return tasks.items(args.data, args.seed, count)
        available = None
    else:
        records = plan.records if plan is not None and plan.records is not None else \
            tasks.read_conversations(args.data, args.images)

        def get(count):
            return tasks.llava_items(records, args.images, count)
        available = len(records)
    if args.samples is not None:
        return get(args.samples)
    # Count the questions image by image (each made once here, then again as it is reached).
    count, asked = 0, 0
    for item in get(available if available is not None else tasks.MOST_ITEMS):
        count, asked = count + 1, asked + min(len(item.questions), args.turns)
        if asked >= QUESTIONS:
            break
    return get(max(count, 1))


def device_of(name: str) -> str:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and processes.count() > 1:
        return f"cuda:{processes.local_rank()}"   # one device per process on its machine
    return name


@torch.no_grad()
def evaluate(args, plan: Plan | None = None, progress: bool = True) -> dict:
    """Runs every row over the question set; the JSON document (`--json`'s)."""
    plan = plan or check(args)
    items = items_for(args, plan)
    if not items:
        raise UsageError(f"--data {args.data}: no images")
    device = device_of(args.device)
    dtype = getattr(torch, args.dtype)
    model, processor = load_model(args.model, dtype, device)
    family = model.config.model_type
    with tempfile.TemporaryDirectory() as folder:
        width = model.config.text_config.hidden_size
        weights = weights_file(args.weights, width, args.dc, args.seed, Path(folder))
        compressor = Compressor(weights, backend=args.backend)
        rows = [Row("full", 1.0, ReducedModel(model, method="full"))]
        for method in plan.methods[1:]:
            for keep in plan.keeps:
                row = Row(method, keep, scope=method_scope(method, args.scope or "image"))
                if method == "metacompress":
                    row.trained = args.weights != "init"
                if method == "metacompress" and weights is None:
                    row.skipped = "no --weights (a P_meta file, a shipped name, or init)"
                elif method in ATTENTION and family in NO_CLS:
                    row.skipped = f"{family}'s vision tower has no [CLS] token to rank by"
                else:
                    row.reduced = ReducedModel(model, compressor, keep=keep, method=method,
                                               scope=row.scope, seed=args.seed)
                rows.append(row)
        live = [row for row in rows if row.skipped is None]
        attention = any(row.reduced.needs_attention for row in live)
        adapter = rows[0].reduced.adapter
        timer = PrefillTimer(model)
        # Image i is measured by process i mod N; every process agrees after each round so
        # that a failure in one stops them all.
        count, rank = processes.count(), processes.rank()
        measured = [[] for _ in live]
        # Every process walks the set in order (each image made or read as it is reached,
        # never all held) and measures its own images.
        walk = iter(items)
        bar = tqdm(total=len(items), desc="evaluate", unit="image", disable=not progress or not processes.is_main())
        try:
            for first in range(0, len(items), count):
                failure = None
                try:
                    batch = [next(walk) for _ in range(min(count, len(items) - first))]
                    if rank < len(batch):
                        index = first + rank
                        questions = batch[rank].questions[:args.turns]
                        if not questions:
                            raise UsageError(f"--data {args.data}: image {index} has no questions")
                        for out, record in zip(measured, _image(
                                live, adapter, processor, batch[rank].image, questions, attention, timer,
                                args.max_new_tokens, device, index, warm_up=first == 0)):
                            out.append(record)
                except Exception as error:
                    failure = error
                processes.agree(failure)
                bar.update(min(count, len(items) - first))
        finally:
            bar.close()
            timer.close()
        for row, shares in zip(live, zip(*processes.agree(None, measured))):
            for record in sorted((record for share in shares for record in share), key=lambda r: r.index):
                row.add(record)
    return {"model": args.model, "data": args.data, "samples": len(items), "seed": args.seed,
            "turns": args.turns, "questions": sum(rows[0].asked), "weights": args.weights,
            "device": device, "dtype": args.dtype, "runtime": compressor.device,
            "confidence": statistics.CONFIDENCE, "resamples": statistics.RESAMPLES,
            "metacompress_trained": (args.weights != "init") if weights is not None else None,
            "rows": summaries(live, args.seed),
            "skipped": [{"method": row.method, "keep": row.keep, "reason": row.skipped}
                        for row in rows if row.skipped is not None]}


def summaries(live: list[Row], seed: int) -> list[dict]:
    """Every row's numbers with their intervals; each method but MetaCompress against
    MetaCompress of this run at the same keep (`vs_metacompress`, None where there is none)."""
    metacompress = {row.keep: index for index, row in enumerate(live) if row.method == "metacompress"}
    baselines = [None if row.method == "metacompress" else metacompress.get(row.keep) for row in live]
    extra = statistics.row_statistics([row.outcomes() for row in live], baselines, seed=seed)
    out = []
    for row, more in zip(live, extra):
        summary = row.summary() | more
        if row.method != "metacompress":
            summary.setdefault("vs_metacompress", None)
        out.append(summary)
    return out


def _image(live, adapter, processor, image, questions, attention, timer, max_new_tokens, device,
           index, warm_up=False) -> list[Measured]:
    """Every row on image `index`: one pass of the vision tower, one reduction per row, the
    conversation and the teacher-forced pass; what each row measured. `warm_up`: first one untimed, uncounted turn
    of the full row (lazy initialisation, first-call allocations), so that the first row
    timed is not also the first run."""
    reference = []
    for turn, question in enumerate(questions):
        reference += [{"from": "human", "value": ("<image>\n" if turn == 0 else "") + question.text},
                      {"from": "gpt", "value": question.answer}]
    sample = conversation_sample(processor, image, reference)
    dtype = adapter.model.get_input_embeddings().weight.dtype
    pixels = pixels_of({"pixel_values": sample.pixel_values, "image_size": sample.image_size,
                        "grid_thw": sample.grid_thw}).to(device)
    pixels.pixel_values = pixels.pixel_values.to(dtype)
    if attention:
        features, weights = adapter.features_and_attention(pixels)
    else:
        features, weights = adapter.features(pixels), None
    if warm_up:
        images = live[0].reduced.reduce_features(pixels, features, weights)
        converse(live[0].reduced, processor, image, questions[:1], images, timer, max_new_tokens, device)
    full_answers, full_log_probs, measured = None, None, []
    for row in live:
        images = row.reduced.reduce_features(pixels, features, weights)
        answers, seconds = converse(row.reduced, processor, image, questions, images, timer,
                                    max_new_tokens, device)
        log_probs = answer_log_probs(row.reduced, sample, images)
        if row.method == "full":
            full_answers, full_log_probs = answers, log_probs
        kl = (full_log_probs.exp() * (full_log_probs - log_probs)).sum(-1)
        measured.append(Measured(
            index, sum(tokens.shape[0] for tokens in images.tokens), float(kl.clamp_min(0).sum()),
            kl.numel(), seconds, [normalise(answer) == normalise(question.answer)
                                  for question, answer in zip(questions, answers)],
            [normalise(answer) == normalise(full) for answer, full in zip(answers, full_answers)],
            [getattr(question, "family", None) for question in questions]))
    return measured


# --- output (table and plot: report.py) -----------------------------------------------------

def main(argv=None) -> int:
    """The command: 0, or 2 (arguments) / 1 (anything else) after one `error:` line, printed by
    the first process (every process stops when one fails)."""
    processes.start()
    return run(lambda: _run(argv), usage=(UsageError, CommandUsage, tasks.TaskError, DataError),
               speak=processes.is_main())


def _run(argv) -> None:
    args = arguments(argv)
    plan = check(args)
    result = evaluate(args, plan)
    if not processes.is_main():
        return
    print(table(result))
    # The report and the plot are one set: both written, or neither.
    with Outputs() as outputs:
        if args.json:
            outputs.add_bytes(args.json, (json.dumps(result, indent=2) + "\n").encode())
        if args.plot:
            outputs.add(args.plot, lambda stream: plot(result, stream, Path(args.plot).suffix[1:].lower()))
        outputs.commit()

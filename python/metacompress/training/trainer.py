"""Learn P_meta by the paper's distillation: only `w_q`, `w_k`, `omega` (and, with
`--train-pos`, `pos_embed`) are trained; the vision-language model stays frozen.

    python -m metacompress.train --model llava-hf/llava-v1.6-vicuna-7b-hf \\
        --data conversations.json --images images/ --keep 0.1 --output pmeta.safetensors
    python -m metacompress.train --model tiny-llava --data synthetic --steps 40 \\
        --output pmeta.safetensors
    python -m metacompress.train --model shapes --data shapes --samples 512 ...   # a toy model
    accelerate launch -m metacompress.train ...    # several processes, data-parallel

Under `accelerate launch` (or `torchrun`; docs/TRAINING.md) `--batch` is per process: each
step's global batch of `--batch` x processes conversations is split among the processes in
order, each prepares (processes the images of) only its own share, the gradients and the
reported losses are averaged over the whole global batch, and one process writes and prints.
With the same global batch, seed and data order it trains the same P_meta as one process (up
to the order of float sums). A failure in any process stops all of them with one `error:` line.

Writes the weights (the runtime loads them: `metacompress compress --weights ...`) and a JSON
beside them (`W.json`) naming the model, keep, scope and layout rule.

Every argument, the outputs and the conversations file (every record and image) are checked
before the model loads; a problem is one line on stderr, `error: ...`, and exit status 2 (a
usage error: a bad value, an output that is one of the inputs, a `--resume` whose checkpoint
was trained with another model, keep, scope, dc, pos or --train-pos) or 1 (anything else: a
missing or malformed file, a loss that is not finite, which stops training). Outputs are
written only when training succeeds, each atomically (a temporary file beside it, renamed
over it; a replaced file keeps its mode, a new one gets 0666 & ~umask). `W.json` replaces
only a sidecar the trainer wrote (a JSON object with `"format": "metacompress.train"`, or the
keys of an older version's); any other existing `W.json` is refused.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from .. import files, processes, toy
from ..commands import run
from ..files import write_bytes
from ..models import tiny
from ..models.adapters import Adapter
from ..models.inputs import collate
from ..tasks.conversations import DataError, read_conversations
from ..torch import FORMAT as PMETA_FORMAT, PMeta
from .data import Prepared, llava_json_prepared, synthetic_draw, synthetic_prepare, toy_prepared
from .distill import Weights, losses

LAYOUT_RULES = {
    "llava": "llava-1.5: one 24x24 grid (--layout llava-1.5)",
    "llava_next": "llava-next: base grid, unpadded crops with a newline token after each row "
                  "(--layout llava-next:WIDTHxHEIGHT)",
    "llava_onevision": "llava-onevision: base grid, unpadded crops down-sampled past anyres_max_N "
                       "with a newline token after each row (--layout llava-onevision:WIDTHxHEIGHT)",
    "qwen2_vl": "qwen2-vl: one merged grid per frame (--layout qwen2-vl:TxHxW); reduced tokens "
                "take the 3-D positions of a (t, 2*hq, 2*wq) image",
    "qwen2_5_vl": "qwen2.5-vl: one merged grid per frame, row-major after the window reordering "
                  "is undone (--layout qwen2.5-vl:TxHxW); reduced tokens take the 3-D positions "
                  "of a (t, 2*hq, 2*wq) image",
    "qwen3_vl": "qwen3-vl: one merged grid per frame (--layout qwen3-vl:TxHxW); the deepstack "
                "levels are reduced with the same P (Y_k = P X_k); reduced tokens take the 3-D "
                "positions of a (t, 2*hq, 2*wq) image",
}
SIDECAR_FORMAT = "metacompress.train"
# The keys every sidecar has had, for recognising one written before SIDECAR_FORMAT existed.
SIDECAR_KEYS = {"model", "family", "keep", "scope", "layout", "steps"}
# What a checkpoint must have been trained with to be resumed (--resume refuses others).
RESUME_SETTINGS = ("model", "keep", "scope", "dc", "pos", "train_pos")


class UsageError(Exception):
    """A bad argument: `error: ...`, exit 2."""


class RunError(Exception):
    """Anything else that stops the command: `error: ...`, exit 1."""


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, raised for main to print, rather than usage + exit
        raise UsageError(f"{message} (see --help)")


def arguments(argv=None):
    parser = Parser(prog="python -m metacompress.train", description=__doc__.split("\n\n")[0],
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True,
                        help=f"a local path or hub id, or one of {', '.join(tiny.NAMES + toy.NAMES)}")
    parser.add_argument("--data", required=True,
                        help="a LLaVA-format conversations JSON file, 'synthetic' (tiny models), or a toy "
                             f"task ({', '.join(toy.NAMES)}: its toy model's training split)")
    parser.add_argument("--images", help="the folder the conversations' images are in")
    parser.add_argument("--output", required=True,
                        help="where to write the weights (.safetensors; W.json is written beside them)")
    parser.add_argument("--keep", type=float, default=0.1, help="fraction of visual tokens kept [0.1]")
    parser.add_argument("--scope", choices=["image", "grid"], default="image")
    parser.add_argument("--alpha-entropy", type=float, default=1.0)
    parser.add_argument("--alpha-collapse", type=float, default=1.0)
    parser.add_argument("--clip", type=float, default=1e-2,
                        help="gradient clipping threshold (0: off) [1e-2]")
    parser.add_argument("--clip-mode", choices=["norm", "value"], default="norm",
                        help="clip the global gradient norm, or each value [norm]")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (cosine schedule)")
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps", type=int, help="stop after this many optimizer steps")
    parser.add_argument("--batch", type=int, default=4,
                        help="conversations per step and process (the global batch: this x processes) [4]")
    parser.add_argument("--samples", type=int, default=64, help="synthetic or toy conversations [64]")
    parser.add_argument("--dc", type=int, default=256,
                        help="projection width of new weights (at most the model's width) [256]")
    parser.add_argument("--pos", default="24x24", help="position table GHxGW of new weights, or none")
    parser.add_argument("--init", help="start from these weights instead of the paper's initialisation")
    parser.add_argument("--train-pos", action="store_true", help="train pos_embed too")
    parser.add_argument("--bf16", action="store_true", help="run the model in bfloat16")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--checkpoint", help="folder for resumable checkpoints (state.pt)")
    parser.add_argument("--checkpoint-every", type=int, default=200)
    parser.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


# --- checks before any work -----------------------------------------------------------------------

@dataclass
class Plan:
    """What the checks found: the outputs, the data's records, and the state to resume."""
    weights: Path
    sidecar: Path
    state: Path | None
    pos: tuple[int, int] | None
    settings: dict
    records: list | None = None
    resume: dict | None = None


def parse_pos(text: str) -> tuple[int, int] | None:
    if text.lower() == "none":
        return None
    try:
        gh, gw = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UsageError(f"--pos {text!r}: expected GHxGW such as 24x24, or none") from None
    if gh < 1 or gw < 1:
        raise UsageError(f"--pos {text!r}: expected GH and GW of at least 1, or none")
    return gh, gw


def check_numbers(args):
    """Every number in range, or a UsageError naming it."""
    def finite(name, value, low, low_open=False):
        if not math.isfinite(value) or value < low or (low_open and value == low):
            bound = f"above {low}" if low_open else f"at least {low}"
            raise UsageError(f"{name} {value}: expected a finite number {bound}")
    if not (math.isfinite(args.keep) and 0.0 < args.keep <= 1.0):
        raise UsageError(f"--keep {args.keep}: expected a fraction in (0, 1]")
    finite("--alpha-entropy", args.alpha_entropy, 0.0)
    finite("--alpha-collapse", args.alpha_collapse, 0.0)
    finite("--lr", args.lr, 0.0, low_open=True)
    finite("--weight-decay", args.weight_decay, 0.0)
    finite("--clip", args.clip, 0.0)
    for name, value in [("--epochs", args.epochs), ("--batch", args.batch), ("--samples", args.samples),
                        ("--dc", args.dc), ("--checkpoint-every", args.checkpoint_every)]:
        if value < 1:
            raise UsageError(f"{name} {value}: expected at least 1")
    if args.steps is not None and args.steps < 1:
        raise UsageError(f"--steps {args.steps}: expected at least 1 (or leave it out to train "
                         "--epochs epochs)")
    if not 0 <= args.seed < 2 ** 63:
        raise UsageError(f"--seed {args.seed}: expected 0 <= seed < 2^63")


def check_output(path: Path, what: str):
    """An output: a new file in an existing folder, or a regular file to replace
    (`files.check_output`, the rules every Python writer follows)."""
    try:
        files.check_output(what, path)
    except files.OutputError as error:
        raise (UsageError if error.status == 2 else RunError)(str(error)) from None


def own_sidecar(path: Path) -> bool:
    """Whether `path` is a sidecar the trainer wrote."""
    try:
        content = json.loads(path.read_text(encoding="utf-8")) if path.stat().st_size < 1 << 20 else None
    except (OSError, ValueError):
        return False
    return isinstance(content, dict) and (content.get("format") == SIDECAR_FORMAT
                                          or SIDECAR_KEYS <= content.keys())


def written_here(path: Path) -> bool:
    """Whether `path` is weights or a sidecar the trainer (or `metacompress init`) wrote, which
    a new run may replace even inside the model folder."""
    if path.suffix.lower() == ".json":
        return path.is_file() and own_sidecar(path)
    try:
        from safetensors import safe_open
        with safe_open(str(path), "pt") as opened:
            return (opened.metadata() or {}).get("format") == PMETA_FORMAT["format"]
    except Exception:  # not a safetensors file
        return False


def check_sidecar(path: Path):
    """An existing `W.json` is replaced only when the trainer wrote it."""
    if path.is_file() and not own_sidecar(path):
        raise UsageError(f"{path} exists and is not a sidecar this trainer wrote; it would be "
                         "replaced by the sidecar of --output: move it, or choose another --output")


def model_settings(args, pos) -> dict:
    model = args.model
    if model not in tiny.NAMES + toy.NAMES and Path(model).exists():
        model = str(Path(model).resolve())
    return {"model": model, "keep": args.keep, "scope": args.scope, "dc": args.dc,
            "pos": "none" if pos is None else f"{pos[0]}x{pos[1]}", "train_pos": args.train_pos}


def check(args) -> Plan:
    """Checks the arguments, outputs, inputs and data before any work (see the module's text)."""
    check_numbers(args)
    pos = parse_pos(args.pos)
    synthetic = args.data == "synthetic" or args.data in toy.NAMES
    if args.data == "synthetic" and args.model not in tiny.NAMES:
        raise UsageError(f"--data synthetic is for the tiny models ({', '.join(tiny.NAMES)}); "
                         "give a conversations file for --model " + args.model)
    if args.data in toy.NAMES and args.model != args.data:
        raise UsageError(f"--data {args.data} is the task of the toy model {args.data}; give --model {args.data}")
    if not synthetic and not args.images:
        raise UsageError("--images is needed with a conversations file (--data)")
    model_folder = None
    if args.model not in tiny.NAMES + toy.NAMES and Path(args.model).exists():
        model_folder = Path(args.model)
        if not model_folder.is_dir():
            raise UsageError(f"--model {args.model} is a file; expected a model folder, a hub id or "
                             f"one of {', '.join(tiny.NAMES)}")
    weights = Path(args.output)
    if weights.suffix.lower() == ".json":
        raise UsageError(f"--output {weights}: the sidecar {weights.with_suffix('.json')} would be the "
                         "same file; expected a .safetensors name")
    sidecar = weights.with_suffix(".json")
    state = None
    if args.checkpoint:
        folder = Path(args.checkpoint)
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"--checkpoint {folder} exists and is not a folder; expected a folder "
                             "(new or holding state.pt)")
        state = folder / "state.pt"
    elif args.resume:
        raise UsageError("--resume needs --checkpoint, the folder holding state.pt")
    outputs = [("--output", weights), ("the sidecar", sidecar)] + ([("the checkpoint", state)] if state else [])
    # Outputs that are inputs, or one another.
    inputs = [("--data", Path(args.data))] if not synthetic else []
    if args.init:
        inputs.append(("--init", Path(args.init)))
    if state is not None and args.resume:
        inputs.append(("--resume's checkpoint", state))
    def refuse_inputs(pairs):
        for what, output in outputs:
            for name, source in pairs:
                if source == state and what == "the checkpoint":
                    continue   # resuming reads state.pt and writes it again
                if files.same_file(output, source):
                    raise UsageError(f"{what} {output} is the same file as the input {name} {source}; "
                                     "expected another path")
            if model_folder is not None and output.exists() and not written_here(output):
                inside = os.path.realpath(output)
                if inside == os.path.realpath(model_folder) or inside.startswith(
                        os.path.join(os.path.realpath(model_folder), "")):
                    raise UsageError(f"{what} {output} is in the model folder {model_folder} (--model), "
                                     "one of the inputs; expected another path")
    refuse_inputs(inputs)
    for index, (what, output) in enumerate(outputs):
        for other_what, other in outputs[index + 1:]:
            if os.path.realpath(output) == os.path.realpath(other):
                raise UsageError(f"{what} {output} and {other_what} are the same file; expected "
                                 "different paths")
    for what, output in outputs[:2]:
        check_output(output, what)
    check_sidecar(sidecar)
    if state is not None:
        if state.exists() and not state.is_file():
            raise UsageError(f"the checkpoint {state} exists and is not a regular file")
        ancestor = Path(args.checkpoint)
        while not ancestor.exists() and ancestor != ancestor.parent:
            ancestor = ancestor.parent
        if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
            raise RunError(f"--checkpoint {args.checkpoint}: cannot create it in {ancestor}")
    if args.init and not Path(args.init).is_file():
        raise RunError(f"--init {args.init}: no such file")
    plan = Plan(weights, sidecar, state, pos, model_settings(args, pos))
    # The data: every record and image.
    if not synthetic:
        try:
            plan.records = read_conversations(args.data, args.images)
        except DataError as error:
            raise RunError(str(error)) from None
        images = sorted({Path(args.images) / record["image"] for record in plan.records})
        refuse_inputs([("image", image) for image in images])
    if args.resume:
        plan.resume = read_checkpoint(state, plan.settings)
    return plan


def read_checkpoint(state: Path, settings: dict) -> dict:
    """The checkpoint to resume, refused when it was trained with other settings."""
    if not state.is_file():
        raise RunError(f"--resume: {state} does not exist; expected the state.pt of an earlier run "
                       "with this --checkpoint")
    try:
        checkpoint = torch.load(state, weights_only=True, map_location="cpu")
    except Exception as error:  # torch raises several types for a file that is not a checkpoint
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RunError(f"--resume: {state} is not a checkpoint this trainer wrote ({first})") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("settings"), dict):
        raise RunError(f"--resume: {state} does not record the settings it was trained with (an "
                       "older version wrote it); start again without --resume")
    for name in RESUME_SETTINGS:
        theirs, ours = checkpoint["settings"].get(name), settings[name]
        if theirs != ours:
            flag = "--" + name.replace("_", "-")
            raise UsageError(f"{flag} {ours} differs from {theirs}, which the checkpoint {state} was "
                             "trained with; resume with the same settings, or give another --checkpoint")
    return checkpoint


# --- training ------------------------------------------------------------------------------------

def load_model(name: str, bf16: bool):
    """`(model, processor or image processor)`: a tiny model, or one from a path or hub id."""
    if name in tiny.NAMES:
        model, image_processor = tiny.build(name)
        return model.to(torch.bfloat16) if bf16 else model, image_processor
    if name in toy.NAMES:
        model, processor = toy.load(name)
        return model.to(torch.bfloat16) if bf16 else model, processor
    from transformers import AutoModelForImageTextToText, AutoProcessor
    dtype = torch.bfloat16 if bf16 else torch.float32
    model = AutoModelForImageTextToText.from_pretrained(name, dtype=dtype)
    return model, AutoProcessor.from_pretrained(name)


def samples_for(args, adapter, processor, records=None) -> Prepared:
    """The training conversations, each prepared (its image processed) when it is asked for."""
    if args.data == "synthetic":
        if args.model not in tiny.NAMES:
            raise UsageError("--data synthetic is for the tiny models; give a conversations file")
        rng = random.Random(args.seed)
        return Prepared([synthetic_draw(rng) for _ in range(args.samples)],
                        lambda draw: synthetic_prepare(adapter, processor, draw))
    if args.data in toy.NAMES:
        return toy_prepared(processor, args.data, args.samples, args.seed)
    if not args.images:
        raise UsageError("--images is needed with a conversations file")
    if args.model in tiny.NAMES:
        processor = tiny.TinyProcessor(adapter.model, processor)
    return llava_json_prepared(processor, args.data, args.images, records=records)


def order(count: int, seed: int, epoch: int) -> list[int]:
    """The conversations' order in `epoch`: the order a shuffling `DataLoader` with a generator
    seeded `seed` gives (two permutations drawn an epoch), so that resuming mid-epoch and any
    number of processes see the one order."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(2 * epoch + 1):
        permutation = torch.randperm(count, generator=generator)
    return permutation.tolist()


def shares(indices: list[int], batch: int, count: int, rank: int) -> list[tuple[list[int], int]]:
    """Per step, this process's share of the global batch (`batch` x `count` conversations
    in `indices`' order; process `rank` takes the `rank`-th run of `batch`, as accelerate's
    sharded loader does) and the global batch's size (smaller at an epoch's end)."""
    size = batch * count
    steps = []
    for start in range(0, len(indices), size):
        whole = indices[start:start + size]
        steps.append((whole[rank * batch:(rank + 1) * batch], len(whole)))
    return steps


def initial_weights(args, width: int, pos=None) -> PMeta:
    if args.init:
        try:
            return PMeta.load(args.init)
        except (ValueError, TypeError, OSError) as error:
            raise RunError(f"--init {args.init}: {error}") from None
    if pos is None and args.pos.lower() != "none":
        pos = parse_pos(args.pos)
    return PMeta.init(width, min(args.dc, width), pos=pos, seed=args.seed)


def finite_or_stop(step: int, parts: dict):
    if not bool(torch.isfinite(parts["total"]).all()):
        values = ", ".join(f"{k} {float(v.detach()):.4g}" for k, v in parts.items())
        raise RunError(f"step {step}: the loss is not finite ({values}); stopped, nothing written "
                       "(lower --lr or the alphas)")


def train(args, plan: Plan | None = None) -> dict:
    """Runs the training; returns the first and last losses, the history and the global batch."""
    if plan is None:
        plan = check(args)
    from accelerate import Accelerator
    accelerator = Accelerator(mixed_precision="no")
    count, rank = accelerator.num_processes, accelerator.process_index
    if accelerator.distributed_type.name in ("FSDP", "DEEPSPEED", "MEGATRON_LM"):
        # The frozen model is replicated in every process (docs/TRAINING.md says why, and
        # what to do for a model bigger than one device).
        processes.agree(RunError(f"accelerate's {accelerator.distributed_type.name} config: not supported "
                                 "(P_meta trains data-parallel with the frozen model replicated in every "
                                 "process; use a MULTI_GPU config, see docs/TRAINING.md)"))
    torch.manual_seed(args.seed)
    failure = None
    try:
        model, processor = load_model(args.model, args.bf16)
    except (OSError, ValueError) as error:
        failure = RunError(f"--model {args.model}: {str(error).strip().splitlines()[0]}")
    processes.agree(failure)
    if args.gradient_checkpointing:
        # transformers 5 renamed it; the old name still works there, with a warning.
        (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
    adapter = Adapter(model.to(accelerator.device))
    pmeta = initial_weights(args, adapter.width, plan.pos)
    if pmeta.pos_embed is not None and not args.train_pos:
        pmeta.pos_embed.requires_grad_(False)
    samples = samples_for(args, adapter, processor, plan.records)
    steps_per_epoch = math.ceil(len(samples) / (args.batch * count))
    total_steps = args.steps or args.epochs * steps_per_epoch
    trainable = [p for p in pmeta.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=args.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps)))
    pmeta, optimizer = accelerator.prepare(pmeta, optimizer)
    weights = Weights(args.keep, args.scope, args.alpha_entropy, args.alpha_collapse)
    step, history = 0, []
    checkpoint = plan.state.parent if plan.state else None
    module = accelerator.unwrap_model(pmeta)
    if plan.resume is not None:
        state = plan.resume
        try:
            module.load_state_dict(state["pmeta"])
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
        except (RuntimeError, ValueError, KeyError) as error:
            raise RunError(f"--resume: {plan.state} does not fit these weights "
                           f"({str(error).strip().splitlines()[0]})") from None
        step, history = state["step"], state["history"]
        # Each process's own random state; a checkpoint of fewer processes (or of an older
        # version, which kept one) gives its first to the rest.
        states = state.get("rng_by_process") or [state["rng"]]
        torch.set_rng_state(states[rank] if rank < len(states) else states[0])
    progress = tqdm(total=total_steps, initial=step, disable=not accelerator.is_main_process,
                    desc="P_meta", dynamic_ncols=True)
    try:
        while step < total_steps:
            epoch, done = divmod(step, steps_per_epoch)
            for own, size in shares(order(len(samples), args.seed, epoch), args.batch, count, rank)[done:]:
                if step >= total_steps:
                    break
                parts, failure = None, None
                try:
                    # A process with no share of an epoch's last, short batch still runs one
                    # conversation, weighted 0, so that every process takes part in the step.
                    batch = collate([samples[i] for i in own or [0]])
                    parts = losses(adapter, pmeta, batch.to(accelerator.device), weights)
                    finite_or_stop(step + 1, parts)
                except DataError as error:
                    failure = RunError(str(error))
                except ValueError as error:   # e.g. weights that diverged to inf or NaN
                    failure = RunError(f"step {step + 1}: {error}")
                except Exception as error:    # stops the other processes too, rather than hang them
                    failure = error
                share = len(own) / size   # this process's fraction of the global batch
                reported = processes.agree(failure, None if parts is None else
                                           {k: float(v.detach()) * share for k, v in parts.items()})
                optimizer.zero_grad()
                # Gradients are averaged over the processes: each process's mean loss weighted
                # by its share gives the global batch's mean (the same weight, 1, when even).
                scale = share * count
                accelerator.backward(parts["total"] if scale == 1 else parts["total"] * scale)
                if args.clip > 0:
                    if args.clip_mode == "norm":
                        accelerator.clip_grad_norm_(trainable, args.clip)
                    else:
                        accelerator.clip_grad_value_(trainable, args.clip)
                optimizer.step()
                schedule.step()
                step += 1
                history.append({k: sum(values[k] for values in reported) for k in reported[0]})
                progress.update(1)
                progress.set_postfix(pred=f"{history[-1]['pred']:.4f}", entropy=f"{history[-1]['entropy']:.3f}",
                                     collapse=f"{history[-1]['collapse']:.3f}")
                if checkpoint and (step % args.checkpoint_every == 0 or step == total_steps):
                    states = processes.gather(torch.get_rng_state())
                    failure = None
                    if accelerator.is_main_process:
                        try:
                            finite_weights(module, step)
                            checkpoint.mkdir(parents=True, exist_ok=True)
                            save_state(plan.state, {
                                "pmeta": module.state_dict(), "optimizer": optimizer.state_dict(),
                                "schedule": schedule.state_dict(), "step": step, "history": history,
                                "rng": states[0], "rng_by_process": states, "settings": plan.settings})
                        except Exception as error:
                            failure = error
                    processes.agree(failure)
    finally:
        progress.close()
    failure = None
    if accelerator.is_main_process:
        try:
            finite_weights(module, step)
            module.save(plan.weights)
            sidecar = {"format": SIDECAR_FORMAT, "model": args.model, "family": adapter.family,
                       "keep": args.keep, "scope": args.scope, "layout": LAYOUT_RULES[adapter.family],
                       "steps": step, "batch": args.batch * count, "processes": count,
                       "loss_first": history[0] if history else None,
                       "loss_last": history[-1] if history else None}
            write_bytes(plan.sidecar, (json.dumps(sidecar, indent=2) + "\n").encode())
        except Exception as error:
            failure = error
    processes.agree(failure)
    return {"first": history[0] if history else None, "last": history[-1] if history else None,
            "history": history, "batch": args.batch * count, "processes": count}


def finite_weights(module: PMeta, step: int):
    for name, tensor in module.named_parameters():
        if not bool(torch.isfinite(tensor).all()):
            raise RunError(f"step {step}: {name} holds a value that is not finite; stopped, nothing "
                           "written (lower --lr or the alphas)")


def save_state(path: Path, state: dict):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_bytes(path, buffer.getvalue())


def main(argv=None):
    """The command; exits 2 (arguments) or 1 (anything else) after one `error:` line, printed
    by the first process (every process stops when one fails)."""
    processes.start()
    status = run(lambda: _run(argv), usage=(UsageError,), speak=processes.is_main())
    if status:
        raise SystemExit(status)


def _run(argv) -> None:
    failure = None
    try:
        args = arguments(argv)
        plan = check(args)
    except Exception as error:   # every process checks; all stop when one refuses
        failure = error
    processes.agree(failure)
    result = train(args, plan)
    if result["first"] and processes.is_main():
        batch = (f"global batch {result['batch']} ({result['processes']} processes x {args.batch})"
                 if result["processes"] > 1 else f"batch {result['batch']}")
        print(f"trained {len(result['history'])} steps, {batch}: loss {result['first']['total']:.4f} -> "
              f"{result['last']['total']:.4f} (pred {result['first']['pred']:.5f} -> "
              f"{result['last']['pred']:.5f}); wrote {args.output}", file=sys.stderr)

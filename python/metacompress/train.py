"""Learn P_meta by the paper's distillation: only `w_q`, `w_k`, `omega` (and, with
`--train-pos`, `pos_embed`) are trained; the vision-language model stays frozen.

    python -m metacompress.train --model llava-hf/llava-v1.6-vicuna-7b-hf \\
        --data conversations.json --images images/ --keep 0.1 --output pmeta.safetensors
    python -m metacompress.train --model tiny-llava --data synthetic --steps 40 \\
        --output pmeta.safetensors
    accelerate launch -m metacompress.train ...    # several GPUs, data-parallel

Writes the weights (the runtime loads them: `metacompress compress --weights ...`) and a JSON
beside them (`W.json`) naming the model, keep, scope and layout rule.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from . import tiny
from .adapters import Adapter
from .data import collate, llava_json_samples, synthetic_sample
from .distill import Weights, losses
from .torch import PMeta

LAYOUT_RULES = {
    "llava": "llava-1.5: one 24x24 grid (--layout llava-1.5)",
    "llava_next": "llava-next: base grid, unpadded crops with a newline token after each row "
                  "(--layout llava-next:WIDTHxHEIGHT)",
    "qwen2_vl": "qwen2-vl: one merged grid per frame (--layout qwen2-vl:TxHxW); reduced tokens "
                "take the 3-D positions of a (t, 2*hq, 2*wq) image",
}


def arguments(argv=None):
    parser = argparse.ArgumentParser(prog="python -m metacompress.train", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True,
                        help=f"a local path or hub id, or one of {', '.join(tiny.NAMES)}")
    parser.add_argument("--data", required=True,
                        help="a LLaVA-format conversations JSON file, or 'synthetic' (tiny models)")
    parser.add_argument("--images", help="the folder the conversations' images are in")
    parser.add_argument("--output", required=True, help="where to write the weights (.safetensors)")
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
    parser.add_argument("--batch", type=int, default=4, help="conversations per step (per process)")
    parser.add_argument("--samples", type=int, default=64, help="synthetic conversations [64]")
    parser.add_argument("--dc", type=int, default=256, help="projection width of new weights")
    parser.add_argument("--pos", default="24x24", help="position table GHxGW of new weights, or none")
    parser.add_argument("--init", help="start from these weights instead of the paper's initialisation")
    parser.add_argument("--train-pos", action="store_true", help="train pos_embed too")
    parser.add_argument("--bf16", action="store_true", help="run the model in bfloat16")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--checkpoint", help="folder for resumable checkpoints")
    parser.add_argument("--checkpoint-every", type=int, default=200)
    parser.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def load_model(name: str, bf16: bool):
    """`(model, processor or image processor)`: a tiny model, or one from a path or hub id."""
    if name in tiny.NAMES:
        model, image_processor = tiny.build(name)
        return model.to(torch.bfloat16) if bf16 else model, image_processor
    from transformers import AutoModelForImageTextToText, AutoProcessor
    dtype = torch.bfloat16 if bf16 else torch.float32
    model = AutoModelForImageTextToText.from_pretrained(name, dtype=dtype)
    return model, AutoProcessor.from_pretrained(name)


def samples_for(args, adapter, processor):
    if args.data == "synthetic":
        if args.model not in tiny.NAMES:
            raise SystemExit("--data synthetic is for the tiny models; give a conversations file")
        rng = random.Random(args.seed)
        return [synthetic_sample(adapter, processor, rng) for _ in range(args.samples)]
    if not args.images:
        raise SystemExit("--images is needed with a conversations file")
    return list(llava_json_samples(processor, args.data, args.images))


def initial_weights(args, width: int) -> PMeta:
    if args.init:
        return PMeta.load(args.init)
    pos = None
    if args.pos != "none":
        try:
            gh, gw = (int(v) for v in args.pos.lower().split("x"))
        except ValueError:
            raise SystemExit(f"--pos {args.pos!r}: expected GHxGW such as 24x24, or none")
        pos = (gh, gw)
    return PMeta.init(width, min(args.dc, width), pos=pos, seed=args.seed)


def train(args) -> dict:
    """Runs the training; returns the first and last losses."""
    from accelerate import Accelerator
    accelerator = Accelerator(mixed_precision="no")
    torch.manual_seed(args.seed)
    model, processor = load_model(args.model, args.bf16)
    if args.gradient_checkpointing:
        # transformers 5 renamed it; the old name still works there, with a warning.
        (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
    adapter = Adapter(model.to(accelerator.device))
    pmeta = initial_weights(args, adapter.width)
    if pmeta.pos_embed is not None and not args.train_pos:
        pmeta.pos_embed.requires_grad_(False)
    samples = samples_for(args, adapter, processor)
    loader = torch.utils.data.DataLoader(samples, batch_size=args.batch, shuffle=True, collate_fn=collate,
                                         generator=torch.Generator().manual_seed(args.seed))
    total_steps = args.steps or args.epochs * math.ceil(len(samples) / args.batch)
    trainable = [p for p in pmeta.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=args.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps)))
    pmeta, optimizer, loader = accelerator.prepare(pmeta, optimizer, loader)
    weights = Weights(args.keep, args.scope, args.alpha_entropy, args.alpha_collapse)
    step, history = 0, []
    checkpoint = Path(args.checkpoint) if args.checkpoint else None
    if args.resume:
        if checkpoint is None or not (checkpoint / "state.pt").exists():
            raise SystemExit("--resume needs a --checkpoint folder holding state.pt")
        state = torch.load(checkpoint / "state.pt", weights_only=False)
        accelerator.unwrap_model(pmeta).load_state_dict(state["pmeta"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        step, history = state["step"], state["history"]
        torch.set_rng_state(state["rng"])
    progress = tqdm(total=total_steps, initial=step, disable=not accelerator.is_main_process,
                    desc="P_meta", dynamic_ncols=True)
    module = accelerator.unwrap_model(pmeta)
    while step < total_steps:
        for batch in loader:
            if step >= total_steps:
                break
            parts = losses(adapter, pmeta, batch.to(accelerator.device), weights)
            optimizer.zero_grad()
            accelerator.backward(parts["total"])
            if args.clip > 0:
                if args.clip_mode == "norm":
                    accelerator.clip_grad_norm_(trainable, args.clip)
                else:
                    accelerator.clip_grad_value_(trainable, args.clip)
            optimizer.step()
            schedule.step()
            step += 1
            history.append({k: float(v.detach()) for k, v in parts.items()})
            progress.update(1)
            progress.set_postfix(pred=f"{history[-1]['pred']:.4f}", entropy=f"{history[-1]['entropy']:.3f}",
                                 collapse=f"{history[-1]['collapse']:.3f}")
            if checkpoint and (step % args.checkpoint_every == 0 or step == total_steps):
                checkpoint.mkdir(parents=True, exist_ok=True)
                if accelerator.is_main_process:
                    torch.save({"pmeta": module.state_dict(), "optimizer": optimizer.state_dict(),
                                "schedule": schedule.state_dict(), "step": step, "history": history,
                                "rng": torch.get_rng_state()}, checkpoint / "state.pt")
    progress.close()
    if accelerator.is_main_process:
        module.save(args.output)
        sidecar = {"model": args.model, "family": adapter.family, "keep": args.keep, "scope": args.scope,
                   "layout": LAYOUT_RULES[adapter.family], "steps": step,
                   "loss_first": history[0] if history else None, "loss_last": history[-1] if history else None}
        Path(args.output).with_suffix(".json").write_text(json.dumps(sidecar, indent=2) + "\n")
    return {"first": history[0] if history else None, "last": history[-1] if history else None,
            "history": history}


def main(argv=None):
    args = arguments(argv)
    if not 0.0 < args.keep <= 1.0:
        raise SystemExit(f"--keep {args.keep}: expected a fraction in (0, 1]")
    result = train(args)
    if result["first"]:
        print(f"trained {len(result['history'])} steps: loss {result['first']['total']:.4f} -> "
              f"{result['last']['total']:.4f} (pred {result['first']['pred']:.5f} -> "
              f"{result['last']['pred']:.5f}); wrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()

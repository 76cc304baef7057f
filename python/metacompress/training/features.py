"""Writes a model's visual tokens for one image as the runtime's input file: tensor
`features` (`n x d`, float32) in the model's own token order, and its `grids` metadata, so
that `metacompress compress` / `compare` run on real model features. For Qwen3-VL also its
deepstack levels, `deepstack.0`, `deepstack.1`, ... (`n x d` each, laid out as `features`; a
reduction applies the same `P` to each), named in the metadata `deepstack` (a JSON list).

    python -m metacompress.export_features --model llava-hf/llava-v1.6-vicuna-7b-hf \\
        --image photo.jpg --output features.safetensors
    python -m metacompress.export_features --model tiny-llava-next --synthetic-image 3 \\
        --output features.safetensors
"""
from __future__ import annotations

import json
import random

from PIL import Image
from safetensors.torch import save

from ..commands import CommandFailure, CommandUsage, Parser, one_line, run
from ..files import check_output, write_bytes
from ..models import tiny
from ..models.adapters import Adapter
from ..models.inputs import pixels_of, process_image
from ..tasks.conversations import read_image
from ..tasks.synthetic import synthetic_image
from .trainer import load_model


def export(model_name: str, image: Image.Image, output: str) -> tuple[int, list]:
    try:
        model, processor = load_model(model_name, bf16=False)
        adapter = Adapter(model)
    except Exception as error:   # transformers raises many types for a model it cannot load
        raise CommandFailure(f"--model {model_name}: cannot load it as a vision-language model "
                             f"({one_line(error)})") from None
    image_processor = getattr(processor, "image_processor", processor)
    pixels = pixels_of(process_image(image_processor, image))
    features = adapter.features(pixels)
    tokens = features[0]
    n, grids = adapter.layout(pixels, 0)
    if tokens.shape[0] != n:
        raise CommandFailure(f"the model made {tokens.shape[0]} visual tokens; the layout describes {n}")
    tensors = {"features": tokens.float().contiguous()}
    metadata = {"grids": json.dumps([list(g) for g in grids])}
    if features.levels:
        names = [f"deepstack.{k}" for k in range(len(features.levels))]
        tensors.update({name: level[0].float().contiguous() for name, level in zip(names, features.levels)})
        metadata["deepstack"] = json.dumps(names)
    write_bytes(output, save(tensors, metadata=metadata))   # atomic, 0666 & ~umask as the runtime's outputs
    return n, grids


def main(argv=None) -> int:
    """The command: 0, or 2 (arguments) / 1 (anything else) after one `error:` line."""
    return run(lambda: _run(argv))


def _run(argv) -> None:
    parser = Parser(prog="python -m metacompress.export_features")
    parser.add_argument("--model", required=True, help="a local path or hub id, or a tiny model")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", help="the image file")
    source.add_argument("--synthetic-image", type=int, metavar="SEED", help="a random test image")
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    # Before the model loads: the output, then the image, read whole within the budget.
    check_output("--output", args.output, [("--image", args.image)] if args.image else [])
    if args.model not in tiny.NAMES:
        from pathlib import Path
        folder = Path(args.model).expanduser()
        if folder.exists() and not folder.is_dir():
            raise CommandUsage(f"--model {args.model} is a file; expected a model folder, a hub id "
                               f"or one of {', '.join(tiny.NAMES)}")
    if args.image:
        image: Image.Image = read_image(args.image)
    else:
        image = synthetic_image(random.Random(args.synthetic_image))
    n, grids = export(args.model, image, args.output)
    print(f"wrote {n} visual tokens, grids {[list(g) for g in grids]}, to {args.output}")

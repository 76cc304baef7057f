"""Print a toy model's held-out accuracy with all its visual tokens, with a blank image, and
chance: `python -m metacompress.toy [--model shapes] [--seed 1] [--items 100]`."""
import argparse

from . import NAMES, evaluate, load, questions

parser = argparse.ArgumentParser(prog="python -m metacompress.toy", description=__doc__.split("\n")[0])
parser.add_argument("--model", default="shapes", choices=NAMES)
parser.add_argument("--seed", type=int, default=1, help="question set seed (>= 0) [1]")
parser.add_argument("--items", type=int, default=100, help="images, three questions each [100]")
args = parser.parse_args()
model, processor = load(args.model)
items = questions(args.model, args.seed, args.items)
for name, blank in [("full tokens", False), ("blank image", True)]:
    result = evaluate(model, processor, items, blank=blank)
    kinds = ", ".join(f"{kind} {value:.3f}" for kind, value in result.items() if kind not in ("all", "chance"))
    print(f"{args.model} seed {args.seed}, {len(items) * 3} questions, {name}: accuracy {result['all']:.3f} "
          f"({kinds}); chance {result['chance']:.3f}")

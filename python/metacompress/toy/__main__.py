"""Print a toy model's held-out accuracy with all its visual tokens, with a blank image, and
chance (greedy answers, three turns an image); with `--keep K`, also the teacher-forced
accuracy with all tokens and with `Y = P X` at keep K from P_meta's untrained initialisation
(`PMeta.init`) and from the shipped trained P_meta:
`python -m metacompress.toy [--model shapes] [--seed 1] [--items 100] [--keep 0.1]`."""
from .. import tasks
from ..commands import CommandUsage, Parser, run
from . import NAMES, evaluate, forced_accuracy, load, load_pmeta


def line(result: dict) -> str:
    kinds = ", ".join(f"{kind} {value:.3f}" for kind, value in result.items() if kind not in ("all", "chance"))
    return f"accuracy {result['all']:.3f} ({kinds}); chance {result['chance']:.3f}"


def main(argv=None) -> None:
    parser = Parser(prog="python -m metacompress.toy", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="shapes", choices=NAMES)
    parser.add_argument("--seed", type=int, default=1, help="question set seed (>= 0) [1]")
    parser.add_argument("--items", type=int, default=100, help="images, three questions each [100]")
    parser.add_argument("--keep", type=float, help="also compare P_meta (initialised, trained) at this keep")
    args = parser.parse_args(argv)
    # Before the model loads; the images are made as they are read (`tasks.items`).
    if not 0 <= args.seed < 2 ** 63:
        raise CommandUsage(f"--seed {args.seed}: expected 0 <= seed < 2^63")
    if args.keep is not None and not 0 < args.keep <= 1:
        raise CommandUsage(f"--keep {args.keep}: expected a fraction in (0, 1]")
    tasks.check_count(args.items, "items")
    items = tasks.items(args.model, args.seed, args.items)
    model, processor = load(args.model)
    where = f"{args.model} seed {args.seed}, {len(items) * 3} questions"
    for name, blank in [("full tokens", False), ("blank image", True)]:
        print(f"{where}, {name}: {line(evaluate(model, processor, items, blank=blank))}", flush=True)
    if args.keep is not None:
        from ..torch import PMeta
        trained = load_pmeta(args.model)
        initial = PMeta.init(trained.w_q.shape[0], trained.w_q.shape[1],
                             pos=None if trained.pos_embed is None else tuple(trained.pos_embed.shape[:2]))
        print(f"{where}, teacher-forced, full tokens: {line(forced_accuracy(model, processor, items))}", flush=True)
        for name, pmeta in [("P_meta init", initial), ("P_meta trained", trained)]:
            result = forced_accuracy(model, processor, items, lambda x, g: pmeta(x, g, keep=args.keep)[0])
            print(f"{where}, teacher-forced, {name} keep {args.keep}: {line(result)}", flush=True)


if __name__ == "__main__":
    raise SystemExit(run(main, usage=(tasks.TaskError,)))

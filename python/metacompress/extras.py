"""What each room of the package needs beyond numpy, and the one-line refusal when it is not
installed. The base install (`pip install metacompress`) is the runtime door alone (numpy);
the rest comes with extras (python/pyproject.toml, README "Python"):

| extra   | gives                                                         | packages                         |
| ------- | ------------------------------------------------------------- | -------------------------------- |
| `torch` | `metacompress.torch` (the PyTorch twin), torch tensors in/out | torch, safetensors               |
| `hf`    | `metacompress.models`, `metacompress.hf`, `metacompress.tasks`, `metacompress.toy` | + transformers, pillow |
| `train` | `metacompress.training`, `python -m metacompress.train`       | + accelerate, tqdm               |
| `eval`  | `metacompress.evaluation`, `python -m metacompress.evaluate`  | + tqdm, matplotlib, scipy        |
| `all`   | everything                                                    |                                  |
"""
from __future__ import annotations

import importlib
import importlib.util
import sys

# The modules each extra brings (import names), cumulative as the extras in pyproject.toml.
_TORCH = ("torch", "safetensors")
_HF = _TORCH + ("transformers", "PIL")
MODULES = {
    "torch": _TORCH,
    "hf": _HF,
    "train": _HF + ("accelerate", "tqdm"),
    "eval": _HF + ("tqdm", "matplotlib", "scipy"),
}


class MissingExtra(ImportError):
    """A room whose extra is not installed; the message names the extra and how to get it."""


def require(room: str, extra: str) -> None:
    """Raises `MissingExtra` (one line) unless every module of `extra` can be imported; looks
    them up without importing them."""
    missing = [name for name in MODULES[extra] if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingExtra(f'{room} needs the "{extra}" extra (missing: {", ".join(missing)}): '
                           f'pip install "metacompress[{extra}]"')


def run(module: str) -> None:
    """`python -m` a command: imports `module` and calls its `main()`; a missing extra is one
    `error:` line and exit status 1, not a traceback."""
    try:
        command = importlib.import_module(module)
    except MissingExtra as missing:
        print(f"error: {missing}", file=sys.stderr)
        raise SystemExit(1) from None
    raise SystemExit(command.main())

"""The native runtime from Python (SPEC section 8): every reduction method, one implementation.

This module only turns Python's values into what `metacompress._native` (the Rust extension)
reads and wraps its outputs: a torch tensor goes over as a numpy view of its own memory (no
copy; bfloat16 as its uint16 bits) and comes back as a torch tensor over the output array.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

# Headless Linux: Mesa's Wayland probe complains on stderr when XDG_RUNTIME_DIR is unset;
# compute needs no display (the command line and the C API's mc_open do the same; set but
# empty counts as unset).
if sys.platform.startswith("linux") and not os.environ.get("XDG_RUNTIME_DIR"):
    import tempfile

    os.environ["XDG_RUNTIME_DIR"] = tempfile.gettempdir()

from . import _native  # noqa: E402

UsageError = _native.UsageError
Error = _native.Error

Grid = Union[Tuple[int, int, int], Tuple[int, int, int, int]]


class Result(NamedTuple):
    """What `Compressor.compress` hands back."""

    tokens: Any
    """Reduced tokens, `(m, d)` or `(b, m, d)`, in x's dtype; numpy in -> numpy out, torch in
    -> torch out."""
    projection: Any
    """`P`, `(m, n)` or `(b, m, n)` float32 when `projection=True`, else None."""
    queries: list
    """`[(hq, wq), ...]`, one per grid (Qwen2-VL's positions need them); `m` is the sum of
    `hq * wq`."""


def _one_line(text: str) -> str:
    """`text` on one line, cut after 300 characters (a message may echo a huge value)."""
    text = " ".join(text.split())
    return text if len(text) <= 300 else f"{text[:300]}... ({len(text)} characters)"


def _shown(value) -> str:
    """`repr(value)` as a message shows it: one line, cut after 80 characters."""
    text = repr(value).encode("unicode_escape").decode("ascii")
    return text if len(text) <= 80 else f"{text[:80]}... ({len(text)} characters)"


def _torch_tensor(value) -> bool:
    """Whether `value` is a torch tensor (without importing torch when nobody has)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def _host_view(x, name: str = "x"):
    """`(array, bf16, torch_dtype)`: x as a numpy array over the same memory; `name` is what
    messages call it (`x`, `extra[1]`)."""
    if isinstance(x, np.ndarray):
        return x, False, None
    if not _torch_tensor(x):
        raise UsageError(f"{name} is a {type(x).__name__}; expected a numpy array or a torch tensor")
    import torch

    if x.is_nested or x.layout != torch.strided:
        kind = "nested" if x.is_nested else str(x.layout).replace("torch.", "")
        raise UsageError(f"{name} is a {kind} torch tensor; expected a dense one (x.to_dense(), "
                         "or torch.stack of a nested tensor's parts)")
    if x.device.type != "cpu":
        raise UsageError(
            f"{name} is on {x.device}; expected a CPU tensor (the runtime reads host memory: pass "
            f"{name}.cpu())"
        )
    # A negated or conjugated view holds its values only as a flag on other memory: made real.
    x = x.detach().resolve_neg().resolve_conj()
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise UsageError(f"{name} has dtype {x.dtype}; expected torch.float32, torch.float16 or "
                         "torch.bfloat16")
    try:
        if x.dtype == torch.bfloat16:
            # numpy has no bfloat16: the same bytes as uint16, read as bf16 by the runtime.
            return x.view(torch.int16).numpy().view(np.uint16), True, x.dtype
        return x.numpy(), False, x.dtype
    except (TypeError, RuntimeError) as error:
        raise UsageError(f"{name} cannot be read as host memory: {error}") from None


def _as_input(tokens, bf16: bool, torch_dtype):
    """Reduced tokens as the input was: numpy, or torch (bf16 from its uint16 bits)."""
    if torch_dtype is None:
        return tokens
    import torch

    tokens = torch.from_numpy(tokens)
    return tokens.view(torch.int16).view(torch.bfloat16) if bf16 else tokens


class _ArgumentsAsUsage:
    """Turns any refusal of a Python value the extension cannot convert (TypeError,
    OverflowError; it names most arguments itself) into `UsageError`, like every other bad
    argument."""

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if kind is not None and issubclass(kind, (TypeError, OverflowError)):
            raise UsageError(_one_line(str(error))) from None
        return False


def _attention(attention):
    """The attention as a float32 numpy array (a copy only when it is not one already)."""
    if attention is None:
        return None
    try:
        if _torch_tensor(attention):
            if attention.device.type == "meta":
                raise UsageError("attention is on the meta device (shapes, no values); expected "
                                 "a tensor holding values")
            attention = attention.detach().to_dense().cpu().float().numpy()
        return np.ascontiguousarray(attention, dtype=np.float32)
    except (TypeError, ValueError, RuntimeError, NotImplementedError) as error:
        raise UsageError(f"attention cannot be read as float32 values: {error}") from None


class Compressor:
    """Weights (or none) bound to a backend, ready for any number of calls from any thread.

    `weights`: a P_meta safetensors file (needed by method "metacompress" only) or None.
    `backend`: "auto", "cpu", "reference" (float64), "vulkan", "metal", "dx12" or "gl".
    `precision`: "f32", "f16", "f16-acc" (GPU) or "bf16" (CPU).
    `threads`: the CPU path's threads for this compressor's calls (default: all cores).
    """

    def __init__(
        self,
        weights: Union[str, os.PathLike, None],
        backend: str = "auto",
        precision: str = "f32",
        threads: Optional[int] = None,
    ):
        if weights is not None and not isinstance(weights, (str, bytes, os.PathLike)):
            raise UsageError(f"weights is a {type(weights).__name__}; expected the path of a "
                             "P_meta safetensors file, or None")
        with _ArgumentsAsUsage():
            self._native = _native.Compressor(
                None if weights is None else os.fspath(weights), backend, precision, threads
            )

    @property
    def device(self) -> str:
        """What runs the pass: the line `metacompress compress` prints."""
        return self._native.device

    def compress(
        self,
        x,
        grids: Optional[Sequence[Grid]] = None,
        layout: Optional[str] = None,
        keep: float = 0.1,
        scope: str = "image",
        method: str = "metacompress",
        seed: int = 0,
        attention=None,
        projection: bool = False,
    ) -> Result:
        """Reduces each image of `x` (`(n, d)` or `(b, n, d)`) to `m` tokens.

        `x`: numpy float32/float16 or a CPU torch tensor float32/float16/bfloat16,
        C-contiguous; read where it lies. `grids`: `(offset, h, w)` or `(offset, h, w,
        stride)` tuples; `layout`: a preset such as "llava-next:672x672" (not both; neither:
        one square grid). `keep` in (0, 1]. `scope`: "image" or "grid". `method`:
        metacompress, pool, sample, random, tome, divprune, visionzip or prumerge. `seed`:
        random's draws. `attention`: `(n,)` or `(b, n)` for visionzip and prumerge.
        `projection`: also hand back `P`. The GIL is released while the runtime works.
        """
        result, _ = self._compress(x, [], grids, layout, keep, scope, method, seed, attention,
                                   projection)
        return result

    def compress_sharing(
        self,
        x,
        extra: Sequence[Any],
        grids: Optional[Sequence[Grid]] = None,
        layout: Optional[str] = None,
        keep: float = 0.1,
        scope: str = "image",
        method: str = "metacompress",
        seed: int = 0,
        attention=None,
        projection: bool = False,
    ) -> Tuple[Result, list]:
        """`compress(x, ...)` with more token sets of the same images, each reduced with the
        same `P` as `x` (`P X_k`: one `P`, several products), as Qwen3-VL's deepstack features
        need (the language model adds them at the image tokens of its first layers).

        `extra`: arrays or tensors of the same images and tokens as `x` (`(n, d_k)` or
        `(b, n, d_k)`, any width, each read where it lies like `x`). Returns
        `(result, [P X_k, ...])`, each reduced set in its own dtype and kind (numpy or torch).
        """
        if isinstance(extra, np.ndarray) or _torch_tensor(extra):
            raise UsageError("extra is one array; expected a list of arrays or tensors")
        if not isinstance(extra, (list, tuple)):
            raise UsageError(f"extra is a {type(extra).__name__}; expected a list of arrays or "
                             "tensors (an empty list for none)")
        return self._compress(x, list(extra), grids, layout, keep, scope, method, seed,
                              attention, projection)

    def _compress(self, x, extra, grids, layout, keep, scope, method, seed, attention, projection):
        array, bf16, torch_dtype = _host_view(x)
        views = [_host_view(set_, f"extra[{index}]") for index, set_ in enumerate(extra)]
        with _ArgumentsAsUsage():
            tokens, projected, queries, _, reduced = self._native.compress(
                array, bf16, grids, layout, keep, scope, method, seed, _attention(attention),
                bool(projection), [(view, set_bf16) for view, set_bf16, _ in views],
            )
        tokens = _as_input(tokens, bf16, torch_dtype)
        if torch_dtype is not None and projected is not None:
            import torch

            projected = torch.from_numpy(projected)
        reduced = [_as_input(out, set_bf16, set_dtype)
                   for out, (_, set_bf16, set_dtype) in zip(reduced, views)]
        return Result(tokens, projected, queries), reduced

    def __repr__(self) -> str:
        return f"metacompress.Compressor(device={self.device!r})"


def layout(preset: str, pinpoints=None) -> Tuple[int, list]:
    """`(n, [(offset, h, w, stride), ...])` of a layout preset: "llava-1.5",
    "llava-next:WIDTHxHEIGHT" (with `pinpoints`, a model's `image_grid_pinpoints`, or
    LLaVA-NeXT's defaults) or "qwen2-vl:TxHxW"; what `metacompress layout --json` prints."""
    if not isinstance(preset, str):
        raise UsageError(f"layout preset is a {type(preset).__name__}; expected a string such as llava-1.5")
    if pinpoints is not None and not isinstance(pinpoints, str):
        try:
            pinpoints = json.dumps([[int(value) for value in pair] for pair in pinpoints])
        except (TypeError, ValueError, OverflowError):
            raise UsageError(f"pinpoints {_shown(pinpoints)} are not resolutions; expected a list of "
                             "[height, width] pairs such as [[336, 672], [672, 336]]") from None
    return _native.layout(preset, pinpoints)


def method_scope(method: str, scope: str = "image") -> str:
    """The scope `method` runs at when `compress(scope=scope)` asks for one (SPEC section 4,
    v4): `scope` for metacompress, divprune and random (at "image" these two choose among all
    tokens of the image, loose ones included); "grid" for pool, sample, tome, visionzip and
    prumerge, which are defined per grid or run per tile by their authors whatever the scope."""
    with _ArgumentsAsUsage():
        return _native.method_scope(method, scope)


def devices() -> list:
    """Every adapter wgpu sees: dicts with "name", "vendor", "backend", "type", "driver",
    "f16", "subgroups", "timestamps", "binding_limit", "offset_alignment"."""
    return _native.devices()

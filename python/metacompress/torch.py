"""P_meta in differentiable PyTorch: SPEC section 4 exactly, checked against the Rust runtime's
float64 reference (`tests/test_pmeta.py`).

    from metacompress.torch import PMeta
    pm = PMeta.load("w.safetensors")                 # the runtime's weight file (F32/F16/BF16)
    pm = PMeta.init(dim, dc, pos=(24, 24), seed=0)   # the paper's initialisation
    Y, P = pm(X, grids=[(0, 24, 24)], keep=0.1, scope="image")   # X: (n, d) or (b, n, d)
    Yk = apply_projection(P, Xk)                     # another token set with the same P
    pm.save("w.safetensors")                         # the runtime loads it unchanged
"""
from __future__ import annotations

from .extras import require

require("metacompress.torch", "torch")

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save

from .files import write_bytes
from .layouts import check_layout, grids_of, query_shape

FORMAT = {"format": "metacompress.pmeta", "version": "1"}
# The dtypes of a weight file the runtime loads (SPEC section 5).
FILE_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


def _first_bad(tensor: torch.Tensor) -> tuple[tuple[int, ...], float]:
    """The index and value of `tensor`'s first entry that is not finite (for messages)."""
    index = tuple(int(i) for i in (~torch.isfinite(tensor.detach())).nonzero()[0])
    return index, float(tensor.detach()[index])


def _check_tensor(name: str, tensor, rank: int | None = None) -> torch.Tensor:
    """A floating-point (not complex) tensor of `rank` dimensions whose entries are finite."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} is a {type(tensor).__name__}; expected a torch.Tensor")
    if not tensor.is_floating_point():
        raise TypeError(f"{name} has dtype {tensor.dtype}; expected a floating-point tensor")
    if rank is not None and tensor.dim() != rank:
        raise ValueError(f"{name} has shape {tuple(tensor.shape)}; expected {rank} dimensions")
    if not bool(torch.isfinite(tensor.detach()).all()):
        index, value = _first_bad(tensor)
        raise ValueError(f"{name} holds a value that is not finite ({value}) at {index}; "
                         "expected finite weights")
    return tensor


def _check_keep(keep) -> float:
    """`keep` as a float in (0, 1]."""
    if isinstance(keep, (bool, str, bytes)) or keep is None:
        raise TypeError(f"keep {keep!r}: expected a number in (0, 1]")
    try:
        value = float(keep)
    except (TypeError, ValueError):
        raise TypeError(f"keep {keep!r}: expected a number in (0, 1]") from None
    if not 0.0 < value <= 1.0:
        raise ValueError(f"keep {keep}: expected a fraction in (0, 1]")
    return value


class PMeta(torch.nn.Module):
    """The learned compressor: `w_q`, `w_k` (`d x d_c`), `omega` (`d_c`) and an optional
    position table `pos_embed` (`gh x gw x d`), all trainable parameters (float32)."""

    def __init__(self, w_q: torch.Tensor, w_k: torch.Tensor, omega: torch.Tensor,
                 pos_embed: torch.Tensor | None = None):
        super().__init__()
        w_q, w_k = _check_tensor("w_q", w_q, 2), _check_tensor("w_k", w_k, 2)
        omega = _check_tensor("omega", omega, 1)
        d, c = w_q.shape
        if d < 1 or c < 1:
            raise ValueError(f"w_q {tuple(w_q.shape)}: expected d x d_c with d >= 1 and d_c >= 1")
        if w_k.shape != (d, c) or omega.shape != (c,):
            raise ValueError(f"w_q {tuple(w_q.shape)}, w_k {tuple(w_k.shape)}, omega "
                             f"{tuple(omega.shape)}: expected d x d_c, d x d_c and d_c")
        if pos_embed is not None:
            pos_embed = _check_tensor("pos_embed", pos_embed)
            if pos_embed.dim() != 3 or pos_embed.shape[2] != d or min(pos_embed.shape[:2]) < 1:
                raise ValueError(f"pos_embed {tuple(pos_embed.shape)}: expected gh x gw x {d}")
        self.w_q = torch.nn.Parameter(w_q.detach().clone().float())
        self.w_k = torch.nn.Parameter(w_k.detach().clone().float())
        self.omega = torch.nn.Parameter(omega.detach().clone().float())
        self.pos_embed = None if pos_embed is None else torch.nn.Parameter(pos_embed.detach().clone().float())

    @property
    def dim(self) -> int:
        return self.w_q.shape[0]

    @property
    def channels(self) -> int:
        return self.w_q.shape[1]

    # --- files -----------------------------------------------------------------------------

    @classmethod
    def load(cls, path) -> "PMeta":
        """Weights from a safetensors file (`w_q`, `w_k`, `omega`, optional `pos_embed`; F32,
        F16 or BF16), as `metacompress init` and `save` write them."""
        tensors = load_file(str(path))
        missing = [name for name in ("w_q", "w_k", "omega") if name not in tensors]
        if missing:
            raise ValueError(f"{path}: no tensor {missing[0]}; expected w_q, w_k, omega")
        # Other tensors are ignored, as the runtime ignores them.
        tensors = {name: tensors[name] for name in ("w_q", "w_k", "omega", "pos_embed") if name in tensors}
        for name, tensor in tensors.items():
            if tensor.dtype not in FILE_DTYPES:
                raise TypeError(f"{path}: {name} has dtype {tensor.dtype}; expected F32, F16 or BF16")
        values = {name: tensor.float() for name, tensor in tensors.items()}
        for name in values:
            if not bool(torch.isfinite(values[name]).all()):
                index, value = _first_bad(values[name])
                raise ValueError(f"{path}: {name} holds a value that is not finite ({value}) at {index}")
        try:
            return cls(values["w_q"], values["w_k"], values["omega"], values.get("pos_embed"))
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None

    def save(self, path) -> None:
        """Writes F32 weights the runtime loads unchanged, atomically (`files.write_atomically`:
        an existing file is replaced only once the new one is complete, and keeps its mode)."""
        tensors = {"w_q": self.w_q, "w_k": self.w_k, "omega": self.omega}
        if self.pos_embed is not None:
            tensors["pos_embed"] = self.pos_embed
        write_bytes(path, save({k: v.detach().float().contiguous().cpu() for k, v in tensors.items()},
                               metadata=dict(FORMAT)))

    @classmethod
    def init(cls, dim: int, dc: int, pos: tuple[int, int] | None = None, seed: int = 0,
             pos_scale: float = 1.0) -> "PMeta":
        """The paper's initialisation, the recipe of `metacompress init`: `w_q = w_k`, a
        Gaussian `d x d_c` matrix orthonormalised by modified Gram-Schmidt (twice, float64),
        `omega = 1`, and with `pos`, MAE's 2-D sine-cosine table scaled by `pos_scale`. The
        Gaussian comes from PyTorch's generator seeded with `seed` (the Rust CLI draws from
        ChaCha8, so the matrices differ; the table is identical)."""
        if not 1 <= dc <= dim:
            raise ValueError(f"dc {dc} with dim {dim}: expected 1 <= dc <= dim")
        generator = torch.Generator().manual_seed(seed)
        a = torch.randn(dim, dc, generator=generator, dtype=torch.float64)
        for _ in range(2):
            for j in range(dc):
                for k in range(j):
                    a[:, j] -= (a[:, k] @ a[:, j]) * a[:, k]
                a[:, j] /= a[:, j].norm()
        table = None
        if pos is not None:
            table = sine_cosine_table(pos[0], pos[1], dim, pos_scale)
        return cls(a.float(), a.float(), torch.ones(dc), table)

    # --- the forward pass ------------------------------------------------------------------

    def forward(self, x: torch.Tensor, grids: Sequence[Sequence[int]], keep: float = 0.1,
                scope: str = "image"):
        """`(Y, P)` for tokens `x` (`n x d` or `b x n x d`, any float dtype): `Y = P X`
        (`m x d`) in `x`'s dtype and `P` (`m x n`, float32 or float64), SPEC section 4."""
        if not isinstance(scope, str) or scope not in ("image", "grid"):
            raise ValueError(f"scope {scope!r}: expected 'image' or 'grid'")
        keep = _check_keep(keep)
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x is a {type(x).__name__}; expected a torch.Tensor (n, d) or (b, n, d)")
        if not x.is_floating_point():
            raise TypeError(f"x has dtype {x.dtype}; expected a floating-point tensor")
        if x.dim() not in (2, 3):
            raise ValueError(f"x has shape {tuple(x.shape)}; expected (n, d) or (b, n, d)")
        single = x.dim() == 2
        xs = x[None] if single else x
        b, n, d = xs.shape
        if b < 1:
            raise ValueError(f"x has shape {tuple(x.shape)}: a batch of 0 images; expected at least 1")
        if n < 1:
            raise ValueError(f"x has shape {tuple(x.shape)}: no tokens; expected n >= 1")
        if d != self.dim:
            raise ValueError(f"x: features have width d = {d}; the weights expect d = {self.dim}")
        layout = check_layout(n, grids)
        dtype = torch.float64 if xs.dtype == torch.float64 else torch.float32
        xf = xs.to(dtype)
        w_q, w_k, omega = (p.to(dtype) for p in (self.w_q, self.w_k, self.omega))
        # Step 1: Xp = X + E (E zero for loose tokens).
        xp = xf
        if self.pos_embed is not None:
            table = self.pos_embed.to(dtype).permute(2, 0, 1)[None]  # 1 x d x gh x gw
            embedding = xf.new_zeros(n, d)
            for grid in layout:
                resized = F.interpolate(table, size=(grid.height, grid.width), mode="bilinear",
                                        align_corners=False)[0]
                index = torch.tensor(grid.tokens(), device=xf.device)
                embedding = embedding.index_put((index,), resized.permute(1, 2, 0).reshape(-1, d))
            xp = xf + embedding
        # Steps 2-3: pool each grid to its query grid.
        pooled, shapes = [], []
        for grid in layout:
            hq, wq = query_shape(grid.height, grid.width, keep)
            shapes.append((hq, wq))
            index = torch.tensor(grid.tokens(), device=xf.device)
            cells = xp[:, index].reshape(b, grid.height, grid.width, d).permute(0, 3, 1, 2)
            pooled.append(F.adaptive_avg_pool2d(cells, (hq, wq)).permute(0, 2, 3, 1).reshape(b, hq * wq, d))
        q_in = torch.cat(pooled, dim=1)
        # Steps 4-5.
        q = q_in @ w_q
        k = xp @ w_k
        scores = (q * omega) @ k.transpose(1, 2) / math.sqrt(self.channels)
        if scope == "grid":
            allowed = torch.zeros(q.shape[1], n, dtype=torch.bool, device=xf.device)
            first = 0
            for grid, (hq, wq) in zip(layout, shapes):
                allowed[first:first + hq * wq, torch.tensor(grid.tokens(), device=xf.device)] = True
                first += hq * wq
            scores = scores.masked_fill(~allowed, float("-inf"))
        # Steps 6-7.
        p = torch.softmax(scores, dim=-1)
        y = (p @ xf).to(xs.dtype)
        # One check (one device synchronisation) for what the runtime refuses: features that
        # are not finite, and a pass that overflows (scores beyond the float range).
        if not bool(torch.isfinite(xs).all() & torch.isfinite(p).all() & torch.isfinite(y).all()):
            self._refuse(x)
        return (y[0], p[0]) if single else (y, p)

    def _refuse(self, x: torch.Tensor):
        """Why the forward pass gave values that are not finite, as a ValueError."""
        if not bool(torch.isfinite(x).all()):
            index, value = _first_bad(x)
            raise ValueError(f"x holds a value that is not finite ({value}) at {index}; "
                             "expected finite features")
        for name, tensor in self.named_parameters():
            if not bool(torch.isfinite(tensor).all()):
                index, value = _first_bad(tensor)
                raise ValueError(f"{name} holds a value that is not finite ({value}) at {index}; "
                                 "expected finite weights")
        largest = float(x.detach().abs().max())
        raise ValueError(f"x: the forward pass overflows (features up to {largest:.3g} in size give "
                         "scores beyond the floating-point range); expected smaller features")

    def query_grids(self, grids: Sequence[Sequence[int]], keep: float) -> list[tuple[int, int]]:
        """`(hq, wq)` of each grid at `keep`."""
        keep = _check_keep(keep)
        return [query_shape(g.height, g.width, keep) for g in grids_of(grids)]


def apply_projection(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """`P X` for another token set `x` (`n x d` or `b x n x d`) laid out as the tokens `P`
    was computed from (Qwen3-VL's deepstack levels: `Y_k = P X_k`), in `P`'s dtype and
    returned in `x`'s, as `forward` computes `Y`."""
    if x.shape[-2] != p.shape[-1]:
        raise ValueError(f"x has shape {tuple(x.shape)}: {x.shape[-2]} tokens; P {tuple(p.shape)} "
                         f"takes {p.shape[-1]}")
    return (p @ x.to(p.dtype)).to(x.dtype)


def sine_cosine_table(height: int, width: int, channels: int, scale: float = 1.0) -> torch.Tensor:
    """MAE's 2-D sine-cosine table (`height x width x channels`), as `metacompress init` writes
    it: the first half of the channels encode the row, the second the column, each as
    `channels/4` sines then `channels/4` cosines of frequencies `10000^(-i/(channels/4))`;
    channels left over when `channels` is not a multiple of 4 are zero."""
    quarter = channels // 4
    table = torch.zeros(height, width, channels, dtype=torch.float64)
    if quarter == 0:
        return table.float()
    frequency = 1.0 / 10000.0 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows = torch.arange(height, dtype=torch.float64)[:, None] * frequency
    columns = torch.arange(width, dtype=torch.float64)[:, None] * frequency
    table[:, :, :quarter] = rows.sin()[:, None, :]
    table[:, :, quarter:2 * quarter] = rows.cos()[:, None, :]
    table[:, :, 2 * quarter:3 * quarter] = columns.sin()[None, :, :]
    table[:, :, 3 * quarter:4 * quarter] = columns.cos()[None, :, :]
    return (table * scale).float()


def entropy_loss(p: torch.Tensor) -> torch.Tensor:
    """L_entropy: the mean over rows of `P` of the row entropy."""
    return -(p * torch.log(p.clamp_min(1e-30))).sum(-1).mean()


def collapse_loss(p: torch.Tensor) -> torch.Tensor:
    """L_collapse: the largest column sum of `P`, per image, averaged over the batch."""
    p = p[None] if p.dim() == 2 else p
    return p.sum(dim=-2).amax(dim=-1).mean()

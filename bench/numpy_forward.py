#!/usr/bin/env python3
"""The MetaCompress forward pass (SPEC section 4) in numpy float32, file in, file out, to
compare with `metacompress compress --backend cpu` as whole processes (see BENCHMARKS.md).

    python3 bench/numpy_forward.py make-input OUT.safetensors [--seed N]   # llava-next-7b shape
    python3 bench/numpy_forward.py compress WEIGHTS INPUT OUTPUT [--keep K]

Reads and writes safetensors by hand (the format is 8 bytes of header length, a JSON header,
then the raw data), so numpy is the only dependency. Image scope, F32 only.
"""
import json
import math
import struct
import sys

import numpy as np

# The model's own order: a newline token after each of the 48 crop rows.
LLAVA_NEXT_GRIDS = [[0, 24, 24, 24], [576, 48, 48, 49]]
LLAVA_NEXT_TOKENS = 2928
WIDTH = 4096


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    metadata = header.pop("__metadata__", {})
    base = 8 + length
    tensors = {}
    for name, info in header.items():
        assert info["dtype"] == "F32", f"{name}: only F32 here"
        start, end = info["data_offsets"]
        tensors[name] = np.frombuffer(data, dtype=np.float32, count=(end - start) // 4,
                                      offset=base + start).reshape(info["shape"])
    return tensors, metadata


def write_safetensors(path, tensors, metadata):
    header, offset, blobs = {"__metadata__": metadata}, 0, []
    for name, array in tensors.items():
        blob = np.ascontiguousarray(array, dtype=np.float32).tobytes()
        header[name] = {"dtype": "F32", "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


def resize_axis(out_size, in_size):
    i = np.arange(out_size)
    s = np.maximum(0.0, (i + 0.5) * in_size / out_size - 0.5)
    lower = np.floor(s).astype(int)
    upper = np.minimum(lower + 1, in_size - 1)
    return lower, upper, (s - lower).astype(np.float32)


def query_shape(h, w, keep):
    rnd = lambda v: int(math.floor(v + 0.5))  # half away from zero for positive values
    if h > 1 and w > 1:
        return (min(max(rnd(h * math.sqrt(keep)), 1), h), min(max(rnd(w * math.sqrt(keep)), 1), w))
    if h == 1:
        return 1, min(max(rnd(w * keep), 1), w)
    return min(max(rnd(h * keep), 1), h), 1


def grid_tokens(grid):
    """offset, h, w and the token indices of a grid [offset, h, w] or [offset, h, w, stride]
    (token (r, c) at offset + r * stride + c)."""
    offset, h, w = grid[:3]
    stride = grid[3] if len(grid) > 3 else w
    tokens = offset + np.arange(h)[:, None] * stride + np.arange(w)[None, :]
    return offset, h, w, tokens.reshape(-1)


def forward(x, w_q, w_k, omega, pos, grids, keep, keys_product=np.matmul,
            reduction_product=np.matmul):
    """Y for features `x` (n x d); `keys_product` and `reduction_product` compute `Xp w_k`
    and `P X` (bench/f16_accumulate.py swaps in an emulated f16 accumulation)."""
    n, d = x.shape
    xp = x.copy() if pos is not None else x
    if pos is not None:
        gh, gw, _ = pos.shape
        for grid in grids:
            offset, h, w, tokens = grid_tokens(grid)
            r0, r1, rw = resize_axis(h, gh)
            c0, c1, cw = resize_axis(w, gw)
            top = pos[r0][:, c0] * (1 - cw)[None, :, None] + pos[r0][:, c1] * cw[None, :, None]
            bottom = pos[r1][:, c0] * (1 - cw)[None, :, None] + pos[r1][:, c1] * cw[None, :, None]
            table = top * (1 - rw)[:, None, None] + bottom * rw[:, None, None]
            xp[tokens] += table.reshape(h * w, d)
    pooled = []
    for grid in grids:
        offset, h, w, tokens = grid_tokens(grid)
        hq, wq = query_shape(h, w, keep)
        grid = xp[tokens].reshape(h, w, d)
        for i in range(hq):
            rows = slice(i * h // hq, -(-(i + 1) * h // hq))
            for j in range(wq):
                columns = slice(j * w // wq, -(-(j + 1) * w // wq))
                pooled.append(grid[rows, columns].mean(axis=(0, 1)))
    q = np.stack(pooled) @ w_q
    k = keys_product(xp, w_k)
    s = (q * (omega / np.float32(math.sqrt(w_q.shape[1])))) @ k.T
    s -= s.max(axis=1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(axis=1, keepdims=True)
    return reduction_product(p, x)


def main(argv):
    if argv[:1] == ["make-input"]:
        seed = int(argv[argv.index("--seed") + 1]) if "--seed" in argv else 0
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((LLAVA_NEXT_TOKENS, WIDTH), dtype=np.float32)
        write_safetensors(argv[1], {"features": x}, {"grids": json.dumps(LLAVA_NEXT_GRIDS)})
        return
    if argv[:1] == ["compress"]:
        keep = float(argv[argv.index("--keep") + 1]) if "--keep" in argv else 0.1
        weights, _ = read_safetensors(argv[1])
        inputs, metadata = read_safetensors(argv[2])
        x = inputs["features"]
        grids = json.loads(metadata["grids"])
        y = forward(x, weights["w_q"], weights["w_k"], weights["omega"],
                    weights.get("pos_embed"), grids, keep)
        write_safetensors(argv[3], {"tokens": y}, {"method": "metacompress", "keep": str(keep)})
        return
    sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])

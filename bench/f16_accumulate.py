#!/usr/bin/env python3
"""Does the f16-accumulate variant (`--precision f16-acc`) stay inside SPEC section 7
(relative error 1e-2 in f16) at the shapes of the bench workloads?

Emulates, in numpy, each workload's forward pass with f16 storage (X, w_k, K and Y rounded
to f16) in three ways:
- "f32 sums": every product sums in f32 (precision f16);
- "f16-acc": Y = P X sums runs of 64 inner steps in f16 (four products summed, then added
  to the run's sum, as the vec4 kernels do) and the runs' sums in f32 (what ships);
- "f16 sums" (with --unblocked; slow): K = Xp w_k and Y = P X each one f16 sum over the
  whole inner dimension, the design that was measured and dropped.
The keys association is used for every workload (the keys product's inner dimension is d,
the worst case). Prints the error of Y and P against float64.

    python3 bench/f16_accumulate.py [WORKLOAD ...] [--seed N] [--omega W] [--unblocked]

Inputs as SPEC 7 says: features standard normal, weights of size 1/sqrt(d), omega 1 (or W,
for the sharper rows of P a trained P_meta may give).
"""
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from numpy_forward import forward  # noqa: E402

# name: (grids as [offset, h, w], tokens, d), as `metacompress bench` defines them.
WORKLOADS = {
    "llava15-7b": ([[0, 24, 24]], 576, 4096),
    "llava15-13b": ([[0, 24, 24]], 576, 5120),
    "llava-next-7b": ([[0, 24, 24], [576, 48, 48]], 2928, 4096),
    "qwen2vl-7b": ([[0, 36, 36]], 1296, 3584),
}
CHANNELS = 256
KEEP = 0.1


def f16(a):
    return np.asarray(a, dtype=np.float16)


def f16_sum(a, b):
    """a @ b with f16 inputs, f16 products and one f16 sum, four inner steps at a time."""
    a, b = f16(a), f16(b)
    total = np.zeros((a.shape[0], b.shape[1]), np.float16)
    for k in range(0, a.shape[1], 4):
        part = np.zeros_like(total)
        for j in range(k, min(k + 4, a.shape[1])):
            part += np.multiply.outer(a[:, j], b[j, :])
        total += part
    return total.astype(np.float32)


def f16_runs(a, b, run=64):
    """a @ b summed in f16 over runs of `run` inner steps, the runs' sums in f32."""
    total = np.zeros((a.shape[0], b.shape[1]), np.float32)
    for k in range(0, a.shape[1], run):
        total += f16_sum(a[:, k:k + run], b[k:k + run])
    return total


def f32_accumulate(a, b):
    """a @ b with f16 inputs and f32 sums (the f16 path today)."""
    return (f16(a).astype(np.float32) @ f16(b).astype(np.float32)).astype(np.float16).astype(
        np.float32)


def relative(out, reference):
    return float(np.linalg.norm(out - reference) / np.linalg.norm(reference))


def main(argv):
    seed = int(argv[argv.index("--seed") + 1]) if "--seed" in argv else 0
    scale = float(argv[argv.index("--omega") + 1]) if "--omega" in argv else 1.0
    names = [a for a in argv if a in WORKLOADS] or list(WORKLOADS)
    print(f"seed {seed}, keep {KEEP}, d_c {CHANNELS}, omega {scale}; SPEC 7 bound for f16: 1e-2")
    for name in names:
        grids, n, d = WORKLOADS[name]
        rng = np.random.default_rng(seed)
        x = f16(rng.standard_normal((n, d))).astype(np.float32)
        w_q = (rng.standard_normal((d, CHANNELS)) / np.sqrt(d)).astype(np.float32)
        w_k = f16(rng.standard_normal((d, CHANNELS)) / np.sqrt(d)).astype(np.float32)
        omega = np.full(CHANNELS, scale, np.float32)
        seen = {}

        def exact_reduction(p, x):
            seen["exact"] = p
            return p @ x

        exact = forward(x.astype(np.float64), w_q.astype(np.float64), w_k.astype(np.float64),
                        omega.astype(np.float64), None, grids, KEEP,
                        reduction_product=exact_reduction)
        ways = [("f32 sums", f32_accumulate, f32_accumulate),
                ("f16-acc", f32_accumulate, f16_runs)]
        if "--unblocked" in argv:
            ways.append(("f16 sums", f16_sum, f16_sum))
        for label, keys, product in ways:

            def reduction(p, x):
                seen["p"] = p
                return product(p, x)

            start = time.time()
            y = forward(x, w_q, w_k, omega, None, grids, KEEP, keys_product=keys,
                        reduction_product=reduction)
            print(f"{name:14} {label:9}: Y error {relative(y, exact):.2e}, P error "
                  f"{relative(seen['p'], seen['exact']):.2e} ({time.time() - start:.0f} s)",
                  flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])

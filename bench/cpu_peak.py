#!/usr/bin/env python3
"""The machine's f32 (and bf16) matrix-product rate through the libraries a user would reach
for, for the CPU path's side-by-side (issue 16): OpenBLAS via numpy and MKL/oneDNN via
PyTorch on a 4096 x 4096 product, and on the llava-next-7b forward's own skinny shapes.
Prints GFLOP/s, best of --runs. Usage: python3 bench/cpu_peak.py [--runs N] [--size S] [--bf16]
(numpy and torch from python/.venv: `python/.venv/bin/python bench/cpu_peak.py`)."""
import argparse
import time


def best_rate(multiply, flops, runs):
    multiply()  # warm-up
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        multiply()
        best = min(best, time.perf_counter() - started)
    return flops / best / 1e9


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--bf16", action="store_true",
                        help="also bf16 (fast only with AVX512-BF16/AMX; minutes without)")
    args = parser.parse_args()
    s = args.size
    shapes = [(s, s, s), (2928, 4096, 256), (289, 2928, 4096)]  # m, k, n
    import numpy as np
    for m, k, n in shapes:
        a = np.random.standard_normal((m, k)).astype(np.float32)
        b = np.random.standard_normal((k, n)).astype(np.float32)
        rate = best_rate(lambda: a @ b, 2 * m * k * n, args.runs)
        print(f"numpy (OpenBLAS) f32 {m}x{k}x{n}: {rate:.1f} GFLOP/s")
    import torch
    for dtype in (torch.float32, torch.bfloat16) if args.bf16 else (torch.float32,):
        for m, k, n in shapes:
            a = torch.randn(m, k).to(dtype)
            b = torch.randn(k, n).to(dtype)
            rate = best_rate(lambda: a @ b, 2 * m * k * n, args.runs)
            print(f"torch {torch.__version__} {str(dtype)[6:]} {m}x{k}x{n}: {rate:.1f} GFLOP/s")


if __name__ == "__main__":
    main()

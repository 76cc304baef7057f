#!/usr/bin/env python3
"""One call of the runtime through Python (`metacompress.Compressor.compress`) against
`metacompress bench` on the same workload and backend, and what the call adds to the peak
memory of the process (see BENCHMARKS.md, "The runtime from Python").

    python/.venv/bin/python bench/python_call.py [--batch 16] [--runs 5] [--warmup 1]
        [--rounds 2] [--dtype f32|f16|bf16] [--binary target/release/metacompress]

The workload is `metacompress bench --workload llava-next-7b --backend cpu`'s: b x 2928 x 4096
standard-normal features on LLaVA-NeXT's 672x672 layout, P_meta from `init --dc 256 --pos
24x24 --seed 0`, keep 0.1. Rounds alternate the two (bench first), so a busy machine slows both.
Each call through Python also reports the seconds of the runtime's own call inside it (the
span `metacompress bench` times): their ratio is the binding's overhead, free of the load
of other processes that moves whole calls by tens of percent on a shared machine.
"""
import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

import metacompress as mc
from metacompress.memory import peak_reset, peak_since_reset

ROOT = pathlib.Path(__file__).resolve().parents[1]


class Recording:
    """The extension's compressor, recording the seconds the runtime's own call took (what
    `metacompress bench` times) of each call made through the public API."""

    def __init__(self, native):
        self.native, self.seconds = native, []

    def compress(self, *args):
        out = self.native.compress(*args)
        self.seconds.append(out[3])
        return out

    def __getattr__(self, name):
        return getattr(self.native, name)
N, D, CHANNELS = 2928, 4096, 256


def bench_call_ms(binary, batch, runs, warmup):
    """`metacompress bench`'s median and fastest whole-call times (ms)."""
    with tempfile.TemporaryDirectory() as folder:
        report = pathlib.Path(folder) / "bench.json"
        subprocess.run(
            [binary, "bench", "--backend", "cpu", "--workload", "llava-next-7b", "--batch", str(batch),
             "--runs", str(runs), "--warmup", str(warmup), "--json", str(report)],
            check=True, capture_output=True, text=True)
        data = json.loads(report.read_text())
    variant = data["workloads"][0]["variants"][0]
    return variant["call"]["median_ms"], variant["call"]["min_ms"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dtype", default="f32", choices=["f32", "f16", "bf16"])
    parser.add_argument("--binary", default=str(ROOT / "target" / "release" / "metacompress"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        weights = pathlib.Path(folder) / "pmeta.safetensors"
        subprocess.run([args.binary, "init", "--dim", str(D), "--dc", str(CHANNELS), "--pos", "24x24",
                        "--seed", "0", "--output", str(weights)], check=True, capture_output=True)
        compressor = mc.Compressor(weights, backend="cpu")
    compressor._native = Recording(compressor._native)
    print(f"device: {compressor.device}")
    rng = np.random.default_rng(2026)
    # Filled image by image, so that nothing but x itself is ever as large as x.
    x = np.empty((args.batch, N, D), dtype=np.float32)
    for image in range(args.batch):
        x[image] = rng.standard_normal((N, D), dtype=np.float32)
    if args.dtype == "f16":
        x = x.astype(np.float16)
    elif args.dtype == "bf16":
        import torch

        x = torch.from_numpy(x).to(torch.bfloat16)
    size = x.numel() * x.element_size() if args.dtype == "bf16" else x.nbytes
    grids = mc.layout("llava-next:672x672")[1]

    python_ms, runtime_ms, bench_ms, bench_min, raised = [], [], [], [], []
    for _ in range(args.rounds):
        median, fastest = bench_call_ms(args.binary, args.batch, args.runs, args.warmup)
        bench_ms.append(median)
        bench_min.append(fastest)
        for run in range(args.warmup + args.runs):
            before = peak_reset()
            started = time.perf_counter()
            tokens = compressor.compress(x, grids=grids, keep=0.1).tokens
            elapsed = (time.perf_counter() - started) * 1e3
            peak = peak_since_reset() - before
            out = tokens.numel() * tokens.element_size() if args.dtype == "bf16" else tokens.nbytes
            del tokens
            if run >= args.warmup:
                python_ms.append(elapsed)
                runtime_ms.append(compressor._native.seconds[-1] * 1e3)
                raised.append(peak)
    mib = 1 << 20
    print(f"x: {tuple(x.shape)} {args.dtype}, {size / mib:.0f} MiB; output {out / mib:.1f} MiB")
    print(f"peak raised by a call: median {statistics.median(raised) / mib:.1f} MiB, "
          f"most {max(raised) / mib:.1f} MiB (output + the call's own buffers; a copy of x would be "
          f"{size / mib:.0f} MiB more)")
    py, bn = statistics.median(python_ms), statistics.median(bench_ms)
    print(f"through Python: median {py:.1f} ms, min {min(python_ms):.1f} ms over {len(python_ms)} calls")
    print(f"metacompress bench (whole call): medians {', '.join(f'{v:.1f}' for v in bench_ms)} ms; "
          f"median of them {bn:.1f} ms, min {min(bench_min):.1f} ms")
    print(f"Python / bench: medians {py / bn:.3f}, fastest {min(python_ms) / min(bench_min):.3f}")
    # The same calls: the public API's wall time against the runtime's own call inside it.
    ratios = [p / r for p, r in zip(python_ms, runtime_ms)]
    print(f"the same calls, runtime's own time: median {statistics.median(runtime_ms):.1f} ms; "
          f"Python / runtime per call: median {statistics.median(ratios):.4f}, most {max(ratios):.4f} "
          f"(the binding's share per call: median "
          f"{statistics.median(p - r for p, r in zip(python_ms, runtime_ms)):.1f} ms)")


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""The CPU path side by side, in one run: metacompress f32 and bf16 against OpenBLAS (numpy)
and PyTorch (MKL/oneDNN) on llava-next-7b (n 2928, d 4096, d_c 256, keep 0.1), with the
ratios the CPU issue sets as targets. Run it through bench/compare_cpu.sh (which builds the
binary and picks python/.venv's interpreter, since it needs numpy, torch and safetensors).

    python bench/compare_cpu.py [--runs N] [--bf16-size S]

Measured, in this order, on one machine (a noisy VM gives a different peak from minute to
minute, so the peaks are measured before and after and the larger kept):
  1. peaks: numpy and torch f32 on a 4096^3 product, torch bf16 on an S^3 product;
  2. `metacompress bench --backend cpu` at f32 and at bf16 (in-process forward, median);
  3. bench/torch_forward.py --device cpu at f32 and bf16 (in-process forward, median);
  4. whole processes, file in and file out: metacompress f32 (f32 file), metacompress bf16
     (bf16 file, --precision bf16) and bench/numpy_forward.py (f32 file): median wall time
     and median peak resident memory (the child's own getrusage);
  5. the peaks again.
Then the ratios, and the tokens of metacompress against numpy's (independent code).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BINARY = os.path.join(ROOT, "target", "release", "metacompress")
sys.path.insert(0, HERE)
from cpu_peak import best_rate  # noqa: E402 (bench/ is not a package)
WORKLOAD = "llava-next-7b"
GRIDS = [[0, 24, 24], [576, 48, 48, 49]]


def peaks(bf16_size, runs):
    import numpy as np
    import torch
    s = 4096
    a = np.random.standard_normal((s, s)).astype(np.float32)
    b = np.random.standard_normal((s, s)).astype(np.float32)
    numpy_f32 = best_rate(lambda: a @ b, 2 * s**3, runs)
    ta, tb = torch.randn(s, s), torch.randn(s, s)
    torch_f32 = best_rate(lambda: ta @ tb, 2 * s**3, runs)
    q = bf16_size
    ha, hb = torch.randn(q, q).bfloat16(), torch.randn(q, q).bfloat16()
    torch_bf16 = best_rate(lambda: ha @ hb, 2 * q**3, max(1, runs // 2))
    return {"numpy_f32": numpy_f32, "torch_f32": torch_f32, "torch_bf16": torch_bf16}


def whole_process(command, runs, work):
    """Median wall seconds and median peak resident MiB of `runs` runs of `command`; the peak
    from /usr/bin/time (a small parent, so the peak is the command's own)."""
    seconds, memory = [], []
    record = os.path.join(work, "time.txt")
    for _ in range(runs):
        started = time.perf_counter()
        done = subprocess.run(["/usr/bin/time", "-o", record, "-f", "%M", *command],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        seconds.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise SystemExit(f"{command[0]} failed: {done.stderr.decode()}")
        peak_kib = open(record).read().split()[-1]
        memory.append(int(peak_kib) / 1024)
    return statistics.median(seconds), statistics.median(memory)


def bench(precision, runs, work):
    path = os.path.join(work, f"bench-{precision}.json")
    subprocess.run([BINARY, "bench", "--workload", WORKLOAD, "--backend", "cpu",
                    "--precision", precision, "--runs", str(runs), "--json", path],
                   check=True, stdout=subprocess.DEVNULL)
    report = json.load(open(path))
    total = report["workloads"][0]["variants"][0]["total"]
    return {"median_ms": total["time"]["median_ms"], "gflops": total["gflops_per_s"],
            "best_gflops": total["flops"] / total["time"]["min_ms"] / 1e6,
            "flops": total["flops"], "device": report["device_summary"]}


def torch_forward(runs, work):
    """Median ms of bench/torch_forward.py's forward on the CPU, f32 (`runs` runs) and bf16
    (one run: without bf16 units it takes tens of seconds)."""
    medians = {}
    for dtype, dtype_runs, warmup in (("f32", runs, 1), ("bf16", 1, 0)):
        path = os.path.join(work, f"torch-{dtype}.json")
        subprocess.run([sys.executable, os.path.join(HERE, "torch_forward.py"), "--device",
                        "cpu", "--workload", WORKLOAD, "--runs", str(dtype_runs), "--warmup",
                        str(warmup), "--dtypes", dtype, "--json", path],
                       check=True, stdout=subprocess.DEVNULL)
        medians[dtype] = json.load(open(path))["results"][0]["median_ms"]
    return medians


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--bf16-size", type=int, default=1024,
                        help="side of torch's bf16 peak product (4096 takes minutes on a "
                             "CPU without bf16 units)")
    args = parser.parse_args()
    import numpy as np
    import torch
    from safetensors.torch import save_file
    sys.path.insert(0, HERE)
    from numpy_forward import read_safetensors

    work = tempfile.mkdtemp()
    f32_file, bf16_file = (os.path.join(work, f"next-{t}.safetensors") for t in ("f32", "bf16"))
    subprocess.run([sys.executable, os.path.join(HERE, "numpy_forward.py"), "make-input",
                    f32_file], check=True)
    features = torch.from_numpy(read_safetensors(f32_file)[0]["features"].copy())
    save_file({"features": features.bfloat16()}, bf16_file,
              metadata={"grids": json.dumps(GRIDS)})
    weights = os.path.join(work, "pmeta.safetensors")
    subprocess.run([BINARY, "init", "--dim", "4096", "--dc", "256", "--pos", "24x24",
                    "--output", weights], check=True, stdout=subprocess.DEVNULL)

    before = peaks(args.bf16_size, 3)
    ours = {p: bench(p, max(args.runs, 5), work) for p in ("f32", "bf16")}
    theirs = torch_forward(args.runs, work)
    outputs = {name: os.path.join(work, f"{name}.safetensors") for name in ("mc", "mc16", "np")}
    processes = {
        "metacompress f32": [BINARY, "compress", "--weights", weights, "--input", f32_file,
                             "--output", outputs["mc"], "--backend", "cpu"],
        "metacompress bf16": [BINARY, "compress", "--weights", weights, "--input", bf16_file,
                              "--output", outputs["mc16"], "--backend", "cpu",
                              "--precision", "bf16"],
        "numpy f32": [sys.executable, os.path.join(HERE, "numpy_forward.py"), "compress",
                      weights, f32_file, outputs["np"]],
    }
    whole = {name: whole_process(command, args.runs, work)
             for name, command in processes.items()}
    after = peaks(args.bf16_size, 3)
    peak = {key: max(before[key], after[key]) for key in before}

    flops = ours["f32"]["flops"]
    torch_rate = {dtype: flops / (ms / 1e3) / 1e9 for dtype, ms in theirs.items()}
    print(f"{time.strftime('%Y-%m-%d %H:%M')} | {ours['f32']['device']} | torch "
          f"{torch.__version__}, numpy {np.__version__} | {os.cpu_count()} CPUs")
    print(f"peaks (GFLOP/s, larger of before/after): numpy f32 4096^3 {peak['numpy_f32']:.1f} "
          f"(before {before['numpy_f32']:.1f}), torch f32 4096^3 {peak['torch_f32']:.1f} "
          f"(before {before['torch_f32']:.1f}), torch bf16 {args.bf16_size}^3 "
          f"{peak['torch_bf16']:.1f}")
    print(f"\n{WORKLOAD}, {flops / 1e9:.2f} GFLOP per forward; in-process forward, median:")
    for name, ms, rate in [("metacompress f32", ours["f32"]["median_ms"], ours["f32"]["gflops"]),
                           ("  best run", flops / ours["f32"]["best_gflops"] / 1e6,
                            ours["f32"]["best_gflops"]),
                           ("metacompress bf16", ours["bf16"]["median_ms"],
                            ours["bf16"]["gflops"]),
                           ("torch f32 (cpu)", theirs["f32"], torch_rate["f32"]),
                           ("torch bf16 (cpu)", theirs["bf16"], torch_rate["bf16"])]:
        print(f"  {name:<20} {ms:9.1f} ms {rate:8.1f} GFLOP/s")
    size = os.path.getsize(f32_file) / 2**20
    print(f"\nwhole process (file in, file out), median of {args.runs}; input {size:.1f} MiB "
          f"(f32), {os.path.getsize(bf16_file) / 2**20:.1f} MiB (bf16):")
    for name, (seconds, memory) in whole.items():
        print(f"  {name:<20} {seconds:7.3f} s {memory:8.1f} MiB peak")

    best_f32 = max(peak["numpy_f32"], peak["torch_f32"])
    ratios = [
        ("f32 forward / best f32 GEMM peak", ours["f32"]["gflops"] / best_f32, ">= 0.75"),
        ("  the same, best forward run", ours["f32"]["best_gflops"] / best_f32, ">= 0.75"),
        ("bf16 forward / torch bf16 peak", ours["bf16"]["gflops"] / peak["torch_bf16"],
         ">= 0.75"),
        ("bf16 forward / f32 forward", ours["bf16"]["gflops"] / ours["f32"]["gflops"], ">= 1.5"),
        ("whole f32 / numpy whole", whole["metacompress f32"][0] / whole["numpy f32"][0],
         "<= 0.4"),
        ("whole f32 / torch f32 forward", whole["metacompress f32"][0] / (theirs["f32"] / 1e3),
         "<= 0.5"),
        ("peak memory f32 / input file", whole["metacompress f32"][1] / size, "<= 1.3"),
        ("peak memory bf16 / bf16 input file",
         whole["metacompress bf16"][1] / (os.path.getsize(bf16_file) / 2**20), "<= 1.3"),
    ]
    print("\nratios (target):")
    for name, value, target in ratios:
        print(f"  {name:<36} {value:6.2f}  ({target})")

    ours_tokens = read_safetensors(outputs["mc"])[0]["tokens"].reshape(-1)
    numpy_tokens = read_safetensors(outputs["np"])[0]["tokens"].reshape(-1)
    difference = float(np.linalg.norm(ours_tokens - numpy_tokens) / np.linalg.norm(numpy_tokens))
    print(f"\ntokens: metacompress f32 against numpy, relative difference {difference:.2e}")
    sys.exit(0 if difference < 1e-4 else 1)


if __name__ == "__main__":
    main()

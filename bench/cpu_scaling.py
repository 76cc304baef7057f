#!/usr/bin/env python3
"""The CPU path's forward time against n and against the batch: `metacompress bench --backend
cpu` on every workload from 576 to 10 368 tokens (batch 1) and on llava-next-7b at batches 1,
4 and 16, keep 0.1. Prints a Markdown table (GFLOP, median and best ms, GFLOP/s, the path's own
f32 peak measured in the same report) and, with --png and matplotlib importable, a plot of
time against GFLOP. Only the standard library otherwise.

    python3 bench/cpu_scaling.py [--runs N] [--json OUT.json] [--png OUT.png]
    python3 bench/cpu_scaling.py --from OUT.json [--png OUT.png]   # table and plot again

Build first: cargo build --release.
"""
import argparse
import json
import os
import subprocess
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(ROOT, "target", "release", "metacompress")
# (workload, batch), in order of work.
POINTS = [("llava15-7b", 1), ("qwen2vl-7b", 1), ("llava-next-7b-photo", 1),
          ("llava-next-7b", 1), ("qwen2vl-7b-video-8f", 1), ("qwen2vl-7b-video-12f", 1),
          ("qwen2vl-7b-video", 1), ("llava-next-7b", 4), ("llava-next-7b", 16)]


def measure(workload, batch, runs, work):
    path = os.path.join(work, f"{workload}-{batch}.json")
    runs = runs if batch == 1 else max(2, runs // 2)
    subprocess.run([BINARY, "bench", "--workload", workload, "--backend", "cpu", "--batch",
                    str(batch), "--runs", str(runs), "--warmup", "1", "--json", path],
                   check=True, stdout=subprocess.DEVNULL)
    report = json.load(open(path))
    entry = report["workloads"][0]
    total = entry["variants"][0]["total"]
    return {"workload": workload, "batch": batch, "n": entry["tokens"], "d": entry["width"],
            "m": entry["queries"], "gflop": total["flops"] / 1e9,
            "median_ms": total["time"]["median_ms"], "min_ms": total["time"]["min_ms"],
            "peak": report["cpu_peak_gflops_per_s"], "runs": runs,
            "device": report["device_summary"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json")
    parser.add_argument("--png")
    parser.add_argument("--from", dest="source", help="a --json file of an earlier run")
    args = parser.parse_args()
    if args.source:
        rows = json.load(open(args.source))
    else:
        work = tempfile.mkdtemp()
        rows = [measure(w, b, args.runs, work) for w, b in POINTS]
    print(f"device: {rows[0]['device']}\n")
    print("| workload | n | d | m | batch | GFLOP | median ms | best ms | GFLOP/s (median) "
          "| ms per GFLOP | peak GFLOP/s | median / peak |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        rate = r["gflop"] / (r["median_ms"] / 1e3)
        print(f"| {r['workload']} | {r['n']} | {r['d']} | {r['m']} | {r['batch']} | "
              f"{r['gflop']:.3f} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | {rate:.1f} | "
              f"{r['median_ms'] / r['gflop']:.2f} | {r['peak']:.1f} | {rate / r['peak']:.2f} |")
    if args.json and not args.source:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    if args.png:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("no matplotlib: no plot")
            return
        single = [r for r in rows if r["batch"] == 1]
        figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        axes[0].plot([r["n"] for r in single], [r["median_ms"] for r in single], "o-",
                     label="forward, median")
        scale = sum(r["median_ms"] for r in single) / sum(r["gflop"] for r in single)
        axes[0].plot([r["n"] for r in single], [r["gflop"] * scale for r in single], "--",
                     label="GFLOP x (total ms / total GFLOP)")
        axes[0].set_xlabel("tokens n (keep 0.1, so m grows with n)")
        axes[0].set_ylabel("ms")
        axes[0].set_title("time against n, batch 1")
        axes[0].legend()
        for r in single:
            axes[0].annotate(r["workload"], (r["n"], r["median_ms"]), fontsize=7,
                             textcoords="offset points", xytext=(4, -10))
        batches = [r for r in rows if r["workload"] == "llava-next-7b"]
        axes[1].plot([r["batch"] for r in batches], [r["median_ms"] for r in batches], "o-",
                     label="llava-next-7b, median")
        axes[1].plot([r["batch"] for r in batches],
                     [batches[0]["median_ms"] * r["batch"] for r in batches], "--",
                     label="batch x (batch-1 time)")
        axes[1].set_xscale("log", base=2)
        axes[1].set_yscale("log")
        axes[1].set_xlabel("batch")
        axes[1].set_ylabel("ms")
        axes[1].set_title("time against batch")
        axes[1].legend()
        figure.suptitle(rows[0]["device"], fontsize=9)
        figure.tight_layout()
        figure.savefig(args.png, dpi=110)
        print(f"wrote {args.png}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""One table from a GPU session's reports: per workload, the median kernel time of every
`metacompress bench` variant (each JSON given with --bench) beside the PyTorch forward's
median per dtype (the JSON of bench/torch_forward.py, --torch). bench/gpu_session.sh prints
it last. Only the standard library.

    python3 bench/side_by_side.py --bench A.json [--bench B.json ...] [--torch T.json]
"""
import argparse
import json


def bench_rows(path):
    """(workload, label, median ms, GFLOP/s) for each variant of one bench report."""
    report = json.load(open(path))
    precision = report["precision"]
    for workload in report["workloads"]:
        for variant in workload["variants"]:
            split = variant.get("split_k", "")
            label = f"metacompress {variant['variant']} {precision}"
            if split:
                label += f" split-K {split}"
            total = variant["total"]
            yield (workload["workload"], label, total["time"]["median_ms"],
                   total.get("gflops_per_s"))


def torch_rows(path):
    report = json.load(open(path))
    for result in report["results"]:
        yield (result["workload"], f"torch {result['dtype']} ({report['device']})",
               result["median_ms"], None)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", action="append", default=[])
    parser.add_argument("--torch")
    args = parser.parse_args()
    rows = [row for path in args.bench for row in bench_rows(path)]
    if args.torch:
        rows += list(torch_rows(args.torch))
    workloads = list(dict.fromkeys(row[0] for row in rows))
    for workload in workloads:
        print(f"\n{workload}")
        print(f"  {'what':<66} {'median ms':>10} {'GFLOP/s':>9}")
        mine = sorted((row for row in rows if row[0] == workload), key=lambda row: row[2])
        for _, label, median, gflops in mine:
            rate = "" if gflops is None else f"{gflops:.1f}"
            print(f"  {label:<66} {median:>10.3f} {rate:>9}")


if __name__ == "__main__":
    main()

"""Prefill time at real sizes, on this CPU: the language model's first pass over the prompt
with all visual tokens against the reduced ones, plus the compressor's own time.

    python/.venv/bin/python bench/prefill.py [--layers 2] [--runs 3] [--prompt 60] [--json out.json]

Language models with random weights in bf16 (transformers' Llama and Qwen2 decoder layers,
sdpa attention, the real widths): the Vicuna-7B of LLaVA-1.5 / LLaVA-NeXT (hidden 4096, 32
layers, 32 heads, intermediate 11008) and Qwen2-VL-7B's (hidden 3584, 28 layers, 28 heads / 4
key-value heads, intermediate 18944). Only `--layers` decoder layers are built and timed; the
time is scaled by the model's layer count (every layer does the same work). Not timed: the
embedding lookup and the final norm + LM head, which prefill applies to the last position only
(a few ms). Wall times are medians; on a shared machine the process CPU time (all threads,
also a median) says how much work each pass was. The compressor's time is `metacompress bench --workload W --backend cpu` (f32,
median), run here. Sequence = visual tokens + `--prompt` text tokens.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, Qwen2Config
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer, Qwen2RotaryEmbedding

ROOT = Path(__file__).resolve().parent.parent

# name: (workload of `metacompress bench`, config, decoder layer, rotary embedding, layers)
MODELS = {
    "llava-1.5-7b": ("llava15-7b", dict(hidden_size=4096, num_attention_heads=32, num_key_value_heads=32,
                                        intermediate_size=11008), LlamaConfig, LlamaDecoderLayer,
                     LlamaRotaryEmbedding, 32),
    "llava-next-7b": ("llava-next-7b", dict(hidden_size=4096, num_attention_heads=32, num_key_value_heads=32,
                                            intermediate_size=11008), LlamaConfig, LlamaDecoderLayer,
                      LlamaRotaryEmbedding, 32),
    "qwen2-vl-7b": ("qwen2vl-7b", dict(hidden_size=3584, num_attention_heads=28, num_key_value_heads=4,
                                       intermediate_size=18944), Qwen2Config, Qwen2DecoderLayer,
                    Qwen2RotaryEmbedding, 28),
}


def compressor(workload: str, binary: Path, runs: int) -> dict:
    """`n`, `m` and the median forward time (ms) of `metacompress bench` on `workload`."""
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "bench.json"
        subprocess.run([str(binary), "bench", "--workload", workload, "--backend", "cpu", "--runs", str(runs),
                        "--json", str(report)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        data = json.loads(report.read_text())
    entry = data["workloads"][0]
    return {"n": entry["tokens"], "m": entry["queries"], "ms": entry["variants"][0]["total"]["time"]["median_ms"],
            "device": data["device_summary"]}


@torch.no_grad()
def prefill_ms(config, layer_type, rotary_type, layers: int, length: int, runs: int) -> tuple[float, float]:
    """Median wall time and median process CPU time (ms, all threads) of `layers` decoder
    layers on one sequence of `length` tokens."""
    torch.manual_seed(0)
    blocks = [layer_type(config, index).to(torch.bfloat16).eval() for index in range(layers)]
    rotary = rotary_type(config)
    hidden = torch.randn(1, length, config.hidden_size, dtype=torch.bfloat16)
    positions = torch.arange(length)[None]
    # Causal mask as sdpa's is_causal would give: a float mask over the full sequence.
    mask = torch.full((length, length), float("-inf"), dtype=torch.bfloat16).triu(1)[None, None]
    times, cpu = [], []
    for run in range(runs + 1):
        start, start_cpu = time.perf_counter(), time.process_time()
        cos_sin = rotary(hidden, positions)
        state = hidden
        for block in blocks:
            out = block(state, attention_mask=mask, position_ids=positions, position_embeddings=cos_sin)
            state = out[0] if isinstance(out, tuple) else out
        if run:   # the first run warms up
            times.append((time.perf_counter() - start) * 1000)
            cpu.append((time.process_time() - start_cpu) * 1000)
    return statistics.median(times), statistics.median(cpu)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=2, help="decoder layers built and timed [2]")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--prompt", type=int, default=60, help="text tokens besides the visual ones [60]")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--binary", default=str(ROOT / "target/release/metacompress"))
    parser.add_argument("--json")
    args = parser.parse_args()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    rows = []
    print(f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"{args.layers} layers timed and scaled, bf16, prompt {args.prompt} text tokens")
    print("| model | visual tokens full -> kept | LM prefill full | LM prefill reduced | compressor | "
          "reduced + compressor | speed-up | CPU time full / reduced (speed-up) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in args.models.split(","):
        workload, sizes, config_type, layer_type, rotary_type, total_layers = MODELS[name]
        config = config_type(**sizes, num_hidden_layers=total_layers, max_position_embeddings=32768,
                             attn_implementation="sdpa")
        config._attn_implementation = "sdpa"
        reduction = compressor(workload, Path(args.binary), 10)
        scale = total_layers / args.layers
        full, full_cpu = (t * scale for t in prefill_ms(config, layer_type, rotary_type, args.layers,
                                                         reduction["n"] + args.prompt, args.runs))
        reduced, reduced_cpu = (t * scale for t in prefill_ms(config, layer_type, rotary_type, args.layers,
                                                               reduction["m"] + args.prompt, args.runs))
        row = {"model": name, "workload": workload, "n": reduction["n"], "m": reduction["m"], "prompt": args.prompt,
               "layers_timed": args.layers, "layers": total_layers, "prefill_full_ms": full,
               "prefill_reduced_ms": reduced, "prefill_full_cpu_ms": full_cpu, "prefill_reduced_cpu_ms": reduced_cpu,
               "compressor_ms": reduction["ms"],
               "compressor_device": reduction["device"], "speedup": full / (reduced + reduction["ms"])}
        rows.append(row)
        print(f"| {name} | {row['n']} -> {row['m']} | {full:.0f} ms | {reduced:.0f} ms | {reduction['ms']:.1f} ms | "
              f"{reduced + reduction['ms']:.0f} ms | {row['speedup']:.1f}x | {full_cpu / 1000:.1f} s / "
              f"{reduced_cpu / 1000:.1f} s ({full_cpu / reduced_cpu:.1f}x) |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
                                               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                               "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The MetaCompress forward pass (SPEC section 4) in PyTorch, timed with CUDA events, for
issue 3's side-by-side with `metacompress bench` on a real GPU (see BENCHMARKS.md).

    python3 bench/torch_forward.py [--workload NAME|all] [--keep K] [--dc C] [--runs N]
                                   [--warmup N] [--device cuda|cpu] [--json PATH]

Same workloads and shapes as `metacompress bench` (weights: w_q = w_k with orthonormal
columns, omega = 1, a 24x24 position table; features standard-normal). For each workload and
each of f32 (TF32 off, so the products are true f32), f32-tf32 (TF32 on, labelled) and bf16
(features, weights and intermediates in bf16, softmax in f32), the median and spread of --runs timed forwards after
--warmup untimed ones, features already on the device. The scores take the cheaper
association for the shape, as metacompress does. On the first workload, the f32 result is
checked against float64 and the float64 one against bench/numpy_forward.py (whose tokens
bench/compare_cpu.sh checks against metacompress's), so a wrong forward is not timed. First
run (CPU, --device cpu, torch 2.15.0): see BENCHMARKS.md.
"""
import argparse
import json
import math

import torch
import torch.nn.functional as F

WORKLOADS = {
    # name: (grids [(offset, h, w, stride)], n, d), in the models' own token order
    "llava15-7b": ([(0, 24, 24, 24)], 576, 4096),
    "llava15-13b": ([(0, 24, 24, 24)], 576, 5120),
    "llava-next-7b": ([(0, 24, 24, 24), (576, 48, 48, 49)], 2928, 4096),
    "llava-next-7b-photo": ([(0, 24, 24, 24), (576, 32, 48, 49)], 2144, 4096),
    "qwen2vl-7b": ([(0, 36, 36, 36)], 1296, 3584),
}


def query_shape(h, w, keep):
    rnd = lambda v: int(math.floor(v + 0.5))  # half away from zero for positive values
    if h > 1 and w > 1:
        return (min(max(rnd(h * math.sqrt(keep)), 1), h), min(max(rnd(w * math.sqrt(keep)), 1), w))
    if h == 1:
        return 1, min(max(rnd(w * keep), 1), w)
    return min(max(rnd(h * keep), 1), h), 1


def forward(x, w_q, w_k, omega, pos, grids, keep):
    """Y = P X for one image x (n x d); all tensors on one device and dtype."""
    n, d = x.shape
    c = w_q.shape[1]
    xp = x.clone()
    pooled = []
    for offset, h, w, stride in grids:
        # Token (r, c) at offset + r * stride + c.
        tokens = (offset + torch.arange(h)[:, None] * stride + torch.arange(w)[None, :])
        tokens = tokens.reshape(-1).to(x.device)
        grid = x[tokens]
        if pos is not None:
            # Bilinear, half-pixel centres, clamped at 0: PyTorch's align_corners=False.
            table = F.interpolate(pos.permute(2, 0, 1)[None].float(), size=(h, w),
                                  mode="bilinear", align_corners=False)[0]
            grid = grid + table.permute(1, 2, 0).reshape(h * w, d).to(x.dtype)
            xp[tokens] = grid
        hq, wq = query_shape(h, w, keep)
        # adaptive_avg_pool2d's windows are SPEC step 3's floor/ceil windows.
        q_in = F.adaptive_avg_pool2d(grid.reshape(h, w, d).permute(2, 0, 1)[None], (hq, wq))
        pooled.append(q_in[0].permute(1, 2, 0).reshape(hq * wq, d))
    q_in = torch.cat(pooled)
    m = q_in.shape[0]
    q = (q_in @ w_q) * (omega / math.sqrt(c))
    if m * c * d + m * n * d < n * d * c + m * n * c:
        s = (q @ w_k.T) @ xp.T  # (Q omega w_k^T) Xp^T
    else:
        s = q @ (xp @ w_k).T  # (Q omega) K^T
    p = torch.softmax(s.float(), dim=1).to(x.dtype)
    return p @ x


def inputs(name, dc, device, dtype, seed=0):
    grids, n, d = WORKLOADS[name]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w, _ = torch.linalg.qr(torch.randn(d, dc, generator=g, dtype=torch.float64))
    w = w.float()
    omega = torch.ones(dc)
    pos = torch.randn(24, 24, d, generator=g) * 0.1
    move = lambda t: t.to(device=device, dtype=dtype)
    return grids, move(x), move(w), move(w.clone()), move(omega), move(pos)


def check(name, dc, keep):
    """Relative errors on the CPU of this forward in f32 against itself in float64, and of
    itself in float64 against bench/numpy_forward.py (an independent implementation, whose
    tokens bench/compare_cpu.sh checks against metacompress's; it rounds its resize
    weights to f32, hence about 1e-7)."""
    import os
    import sys
    grids, x, w_q, w_k, omega, pos = inputs(name, dc, "cpu", torch.float32)
    y = forward(x, w_q, w_k, omega, pos, grids, keep).double()
    ref = forward(x.double(), w_q.double(), w_k.double(), omega.double(), pos.double(), grids, keep)
    relative = lambda a, b: float((a - b).norm() / b.norm())
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    try:
        import numpy_forward
    except ImportError as error:  # numpy missing: say so, time anyway
        print(f"no check against bench/numpy_forward.py: {error}")
        return relative(y, ref), None
    other = torch.from_numpy(numpy_forward.forward(
        x.double().numpy(), w_q.double().numpy(), w_k.double().numpy(), omega.double().numpy(),
        pos.double().numpy(), [list(g) for g in grids], keep))
    return relative(y, ref), relative(ref, other)


def time_forward(name, dc, keep, device, dtype, runs, warmup):
    grids, x, w_q, w_k, omega, pos = inputs(name, dc, device, dtype)
    run = lambda: forward(x, w_q, w_k, omega, pos, grids, keep)
    for _ in range(warmup):
        run()
    times = []
    for _ in range(runs):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            import time
            t = time.perf_counter()
            run()
            times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    return {"median_ms": times[len(times) // 2], "min_ms": times[0], "max_ms": times[-1],
            "runs": runs}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="all")
    parser.add_argument("--keep", type=float, default=0.1)
    parser.add_argument("--dc", type=int, default=256)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--json")
    parser.add_argument("--dtypes", default="f32,f32-tf32,bf16",
                        help="comma-separated subset of f32, f32-tf32, bf16")
    args = parser.parse_args()
    torch.backends.cudnn.allow_tf32 = False
    names = list(WORKLOADS) if args.workload == "all" else [args.workload]
    torch.backends.cuda.matmul.allow_tf32 = False
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    precision_error, numpy_difference = check(names[0], args.dc, args.keep)
    report = {"device": device_name, "torch": torch.__version__, "keep": args.keep,
              "dc": args.dc, "f32_error_vs_float64": precision_error,
              "float64_vs_numpy_forward": numpy_difference, "results": []}
    print(f"torch {torch.__version__} on {device_name}; keep {args.keep}, d_c {args.dc}; "
          f"on {names[0]}: f32 vs float64 {precision_error:.2e}, float64 vs "
          f"numpy_forward.py "
          f"{'not checked' if numpy_difference is None else f'{numpy_difference:.2e}'}")
    if numpy_difference is not None and numpy_difference > 1e-5:
        raise SystemExit("this forward disagrees with bench/numpy_forward.py: fix it first")
    for name in names:
        for label, dtype, tf32 in [("f32", torch.float32, False),
                                   ("f32-tf32", torch.float32, True),
                                   ("bf16", torch.bfloat16, False)]:
            if label not in args.dtypes.split(","):
                continue
            torch.backends.cuda.matmul.allow_tf32 = tf32
            with torch.inference_mode():
                result = time_forward(name, args.dc, args.keep, args.device, dtype,
                                      args.runs, args.warmup)
            result.update({"workload": name, "dtype": label})
            report["results"].append(result)
            print(f"{name:<14} {label:<5} median {result['median_ms']:.3f} ms "
                  f"(min {result['min_ms']:.3f}, max {result['max_ms']:.3f}, {args.runs} runs)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()

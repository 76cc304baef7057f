#!/usr/bin/env bash
# Side by side, as whole processes (file in, file out): `metacompress compress --backend cpu`
# against the same forward in numpy (bench/numpy_forward.py), llava-next-7b at keep 0.1.
# Prints the median wall time and the median peak resident memory of RUNS runs each.
# Needs python3 with numpy and /usr/bin/time. Usage: bash bench/compare_cpu.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-5}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cargo build --release -q
binary=target/release/metacompress
python3 bench/numpy_forward.py make-input "$work/next.safetensors"
"$binary" init --dim 4096 --dc 256 --pos 24x24 --output "$work/pmeta.safetensors" >/dev/null

measure() { # name, command...: prints "name median_seconds median_peak_MiB"
    local name="$1"; shift
    local lines=()
    for _ in $(seq "$runs"); do
        /usr/bin/time -o "$work/time" -f '%e %M' "$@" >/dev/null 2>&1
        lines+=("$(tail -n 1 "$work/time")")
    done
    local middle=$(( (runs + 1) / 2 ))
    local seconds memory
    seconds=$(printf '%s\n' "${lines[@]}" | awk '{ print $1 }' | sort -g | sed -n "${middle}p")
    memory=$(printf '%s\n' "${lines[@]}" | awk '{ print $2 }' | sort -g | sed -n "${middle}p")
    printf '%-28s %8.3f s %8.0f MiB\n' "$name" "$seconds" "$((memory / 1024))"
}

echo "llava-next-7b (n 2928, d 4096, d_c 256, keep 0.1 -> m 289), median of $runs runs:"
measure "metacompress --backend cpu" "$binary" compress --weights "$work/pmeta.safetensors" \
    --input "$work/next.safetensors" --output "$work/mc.safetensors" --backend cpu
measure "numpy (float32, OpenBLAS)" python3 bench/numpy_forward.py compress \
    "$work/pmeta.safetensors" "$work/next.safetensors" "$work/np.safetensors"
# The two are independent implementations of SPEC 4: their tokens must agree.
python3 - "$work/mc.safetensors" "$work/np.safetensors" <<'PY'
import sys
import numpy as np
sys.path.insert(0, "bench")
from numpy_forward import read_safetensors
ours, theirs = (read_safetensors(path)[0]["tokens"].reshape(-1) for path in sys.argv[1:])
difference = float(np.linalg.norm(ours - theirs) / np.linalg.norm(theirs))
print(f"tokens: metacompress against numpy, relative difference {difference:.2e}")
sys.exit(0 if difference < 1e-4 else 1)
PY

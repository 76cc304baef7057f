#!/usr/bin/env bash
# The CPU path side by side in one run (bench/compare_cpu.py says what it measures): builds the
# release binary, then runs the comparison with python/.venv's interpreter (numpy, torch,
# safetensors; `bash python/test.sh` creates it) or, without it, python3.
# Usage: [FEATURES=openblas] bash bench/compare_cpu.sh [RUNS] [--bf16-size S] [--ours-only [--rounds R]]
# (with FEATURES=openblas the binary's products go through the system's OpenBLAS;
# METACOMPRESS_CPU_KERNELS=gemm in the environment still picks the gemm crate at run time).
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-5}"
shift || true
cargo build --release -q ${FEATURES:+--features "$FEATURES"}
python=python3
[ -x python/.venv/bin/python ] && python=python/.venv/bin/python
exec "$python" -u bench/compare_cpu.py --runs "$runs" "$@"

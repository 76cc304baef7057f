#!/usr/bin/env bash
# The Python side's tests: creates python/.venv (git-ignored) with the pinned versions of
# python/requirements.txt on first use (torch from the package index is a CUDA build of a few
# GB; it runs on the CPU here), installs the package from the checkout (maturin builds the
# native runtime, metacompress._native, in the cargo workspace's target/: re-runs only
# rebuild what changed), then runs pytest against it and the release binary (built by
# `cargo test --release` before, or here if missing).
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/python ] || ! cmp -s requirements.txt .venv/requirements.txt; then
    python3 -m venv .venv
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -r requirements.txt
    cp requirements.txt .venv/requirements.txt
fi
# The pinned maturin of the virtual environment builds it (no isolated build environment to
# download each time); pip's build backend calls it by name. The install is editable (the
# Python files are read from here), so it is redone only when it is missing or the Rust side
# changed since the native module was built.
native=$(ls -t metacompress/_native*.so 2>/dev/null | head -n 1 || true)
if [ -z "$native" ] || [ "$(ls metacompress/_native*.so | wc -l)" -ne 1 ] || ! (cd / && "$OLDPWD/.venv/bin/python" -c "import metacompress._native") 2>/dev/null \
    || [ -n "$(find ../src ../shaders ../Cargo.toml ../Cargo.lock src Cargo.toml pyproject.toml \
                 -newer "$native" -print -quit)" ]; then
    # A native module of another build (a per-version one beside the abi3 one) would be
    # imported first: remove them all before building.
    rm -f metacompress/_native*.so
    PATH="$PWD/.venv/bin:$PATH" .venv/bin/pip install -q --no-deps --no-build-isolation -e .
fi
if [ ! -x ../target/release/metacompress ]; then
    (cd .. && cargo build --release --bin metacompress)
fi
# The package's rooms import only from below (pyproject.toml, [tool.importlinter]).
lint=$(.venv/bin/lint-imports --no-cache 2>&1) || { echo "$lint"; exit 1; }
echo "$lint" | grep "Contracts:"
METACOMPRESS_BIN="$PWD/../target/release/metacompress" .venv/bin/python -m pytest -q "$@"

#!/usr/bin/env bash
# Runs each fuzz target for SECONDS (default 300) with cargo fuzz (nightly toolchain, as
# cargo-fuzz needs), growing fuzz/corpus/TARGET; what a target finds is left in
# fuzz/artifacts/TARGET. `cargo test` replays the corpus (tests/fuzz_replay.rs).
# Usage: bash fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-300}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(file_readers layout_parsers compressor)
for target in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$target"
    cargo +nightly fuzz run "$target" "fuzz/corpus/$target" -- -max_total_time="$seconds" \
        -max_len=4096 -rss_limit_mb=4096
done

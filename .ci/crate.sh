#!/usr/bin/env bash
# The crate as crates.io would receive it: `cargo package` with no warning (metadata, the
# include list), then the packaged crate built outside the workspace from its own files (the
# equivalent of `cargo publish --dry-run`'s verification, sharing the target folder so that the
# registry's crates are not compiled again). The C and Python crates are publish = false.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cargo package -p metacompress --no-verify 2>&1 | tee "$work/package.log"
if grep -q "^warning" "$work/package.log"; then
    echo "ci: cargo package warned (above)"
    exit 1
fi
crate=$(ls -t target/package/metacompress-*.crate | head -n 1)
tar -xzf "$crate" -C "$work"
tar -tzf "$crate" > "$work/files.txt"
for file in LICENSE-MIT LICENSE-APACHE THIRD-PARTY-LICENSES.md README.md CHANGELOG.md; do
    grep -q "/$file\$" "$work/files.txt" || { echo "ci: $file is not in the crate"; exit 1; }
done
if grep -E '/(bench/results|python|bindings|fuzz/corpus)/' "$work/files.txt"; then
    echo "ci: the crate holds files it should not (above)"
    exit 1
fi
(cd "$work"/metacompress-*/ && CARGO_TARGET_DIR="$root/target" cargo build --release --locked)
echo "ci: $(basename "$crate") packages without warnings and builds from its own files"

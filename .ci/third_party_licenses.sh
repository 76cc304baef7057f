#!/usr/bin/env bash
# Writes THIRD-PARTY-LICENSES.md with cargo-about (installed at its pinned version when
# missing); with --check, fails when the committed file differs from what it would write.
set -euo pipefail
cd "$(dirname "$0")/.."
version=0.9.3
if ! cargo about --version 2>/dev/null | grep -q " $version"; then
    cargo install --quiet --locked cargo-about --version "$version" --features cli
fi
generated=$(mktemp)
trap 'rm -f "$generated"' EXIT
cargo about generate --workspace --fail --config about.toml .ci/third_party_licenses.hbs > "$generated"
if [ "${1:-}" = "--check" ]; then
    cmp -s "$generated" THIRD-PARTY-LICENSES.md \
        || { echo "ci: THIRD-PARTY-LICENSES.md is stale: run bash .ci/third_party_licenses.sh"; exit 1; }
else
    cp "$generated" THIRD-PARTY-LICENSES.md
fi

#!/usr/bin/env bash
# Installs metacompress as a user would: builds the abi3 wheel and the sdist with maturin,
# checks the wheel is manylinux (auditwheel show) and holds the licenses, installs it into a
# fresh virtual environment with numpy only and runs .ci/wheel_smoke.py there; then builds
# the sdist in another fresh environment (only Rust and Python: pip fetches maturin as the
# build backend) and runs the smoke test on that install too. Needs python/.venv (python/test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
tools=$root/python/.venv/bin
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
version=$(cargo metadata --no-deps --format-version 1 \
    | python3 -c 'import json, sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "metacompress"))')

(cd python && "$tools/maturin" build --release --quiet --out "$work/dist" && "$tools/maturin" sdist --out "$work/dist")
wheel=$(ls "$work"/dist/metacompress-"$version"-cp310-abi3-*.whl)
sdist=$(ls "$work"/dist/metacompress-"$version".tar.gz)
echo "ci: built $(basename "$wheel") and $(basename "$sdist")"

"$tools/auditwheel" show "$wheel" | tee "$work/audit.txt"
manylinux() { tr -s ' \n' '  ' < "$1" | grep -q 'is consistent with the following platform tag: "manylinux_'; }
manylinux "$work/audit.txt"
unzip -l "$wheel" > "$work/wheel.txt"
tar -tzf "$sdist" > "$work/sdist.txt"
for file in LICENSE-MIT LICENSE-APACHE THIRD-PARTY-LICENSES.md; do
    grep -q "dist-info/licenses/$file" "$work/wheel.txt" || { echo "ci: $file is not in the wheel"; exit 1; }
    grep -q "/$file\$" "$work/sdist.txt" || { echo "ci: $file is not in the sdist"; exit 1; }
done

python3 -m venv "$work/user"
"$work/user/bin/pip" install -q "$wheel"
(cd "$work" && "$work/user/bin/python" "$root/.ci/wheel_smoke.py" "$version")

# From the sdist: pip builds it in an isolated environment (maturin from the package index);
# the cargo target folder is shared so that the registry's crates are not compiled again.
python3 -m venv "$work/from-source"
CARGO_TARGET_DIR="$root/target" "$work/from-source/bin/pip" wheel -q --no-deps -w "$work/sdist-wheel" "$sdist"
"$tools/auditwheel" show "$work"/sdist-wheel/*.whl > "$work/audit-sdist.txt"
manylinux "$work/audit-sdist.txt"
"$work/from-source/bin/pip" install -q "$work"/sdist-wheel/*.whl
(cd "$work" && "$work/from-source/bin/python" "$root/.ci/wheel_smoke.py" "$version")

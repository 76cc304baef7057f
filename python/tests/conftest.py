"""Shared by the tests: the Rust binary (built if missing: these tests never skip) and a seed
printed for replay."""
import os
import pathlib
import random
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def binary():
    path = pathlib.Path(os.environ.get("METACOMPRESS_BIN", ROOT / "target" / "release" / "metacompress"))
    if not path.exists():
        subprocess.run(["cargo", "build", "--release", "--bin", "metacompress"], cwd=ROOT, check=True)
    return str(path)


@pytest.fixture
def seed(request):
    value = int(os.environ.get("METACOMPRESS_SEED", random.SystemRandom().randrange(2**32)))
    print(f"{request.node.name}: seed {value} (replay with METACOMPRESS_SEED={value})")
    return value


def run(binary, *args):
    """Runs the CLI; fails the test with its stderr when it fails."""
    result = subprocess.run([binary, *map(str, args)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout

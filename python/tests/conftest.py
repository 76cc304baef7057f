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


@pytest.fixture
def no_model_loaded(monkeypatch):
    """Fails the test if `evaluate` or `export_features` gets as far as loading a model: their
    refusals must come first."""
    from metacompress.evaluation import harness
    from metacompress.training import features

    def refused(*_, **__):
        raise AssertionError("a model was loaded before the refusal")
    monkeypatch.setattr(harness, "load_model", refused)
    monkeypatch.setattr(features, "load_model", refused)


def one_error(capsys, status_got: int, status: int, *says: str) -> str:
    """A command's answer: exit `status` and one `error:` line on stderr saying `says`."""
    assert status_got == status
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for word in says:
        assert word in lines[0], err
    return lines[0]

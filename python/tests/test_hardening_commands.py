"""The Python commands under hostile use (issue 34, items 4 and 6): bombs refused before they
cost memory (question sets made as they are read and bounded, images' claimed size checked
before decoding, truncated images refused), and one `error:` line with exit 2 (arguments) or
1 (anything else) where there was a traceback."""
import json
import struct
import subprocess
import sys
import time
import zlib

import pytest

from metacompress import tasks
from metacompress.evaluation import harness as evaluate
from metacompress.tasks.conversations import ImageError, read_image
from metacompress.training import features as export_features

from conftest import one_error


def png(width: int, height: int, data: bytes) -> bytes:
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


# --- bombs ---------------------------------------------------------------------------------------

def test_question_sets_are_made_as_they_are_read_and_bounded():
    started = time.monotonic()
    items = tasks.items("synthetic", 0, tasks.MOST_ITEMS)
    assert len(items) == tasks.MOST_ITEMS and time.monotonic() - started < 1
    first = next(iter(items))
    again = next(iter(items))
    assert first.questions == again.questions   # read again: the same items
    assert [i.questions for i in tasks.items("synthetic", 3, 4)] == \
        [i.questions for i in tasks.get("synthetic", 3, 4)]
    with pytest.raises(tasks.TaskError, match="--samples"):
        tasks.items("synthetic", 0, 10 ** 9)


def test_huge_sample_counts_are_refused_at_once(capsys, no_model_loaded):
    started = time.monotonic()
    status = evaluate.main(["--model", "tiny-llava", "--data", "synthetic", "--methods", "pool",
                            "--samples", str(10 ** 9)])
    one_error(capsys, status, 2, "--samples")
    assert time.monotonic() - started < 5


def test_toy_items_are_checked_before_the_model(tmp_path):
    for argv, says in [(["--items", str(10 ** 9)], "--items"), (["--items", "0"], "--items"),
                       (["--keep", "0"], "--keep"), (["--seed", "-1"], "--seed"),
                       (["--items", "x"], "--items")]:
        started = time.monotonic()
        run = subprocess.run([sys.executable, "-m", "metacompress.toy", *argv], capture_output=True,
                             text=True, timeout=120)
        assert run.returncode == 2, run.stderr
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], run.stderr
        assert time.monotonic() - started < 60


def test_image_bombs_and_truncated_images_are_refused(tmp_path, capsys, no_model_loaded):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png(12000, 12000, zlib.compress(b"\0" * 100)))
    rows = b"".join(b"\0" + bytes([200, 100, 50]) * 64 for _ in range(64))
    short = tmp_path / "short.png"
    short.write_bytes(png(64, 64, zlib.compress(rows[:1000])))
    whole = png(64, 64, zlib.compress(rows))
    cut = tmp_path / "cut.png"
    cut.write_bytes(whole[:len(whole) // 2])
    (tmp_path / "good.png").write_bytes(whole)
    assert read_image(tmp_path / "good.png").getpixel((63, 63)) == (200, 100, 50)
    with pytest.raises(ImageError, match="12000 x 12000"):
        read_image(bomb)
    for path in (short, cut):
        with pytest.raises(ImageError, match="not an image PIL reads whole"):
            read_image(path)
    # export_features: refused before the model loads
    for path, says in [(bomb, "12000 x 12000"), (short, "whole"), (tmp_path / "none.png", "no such file")]:
        status = export_features.main(["--model", "tiny-llava", "--image", str(path),
                                       "--output", str(tmp_path / "f.safetensors")])
        one_error(capsys, status, 1, says)
    # evaluate: the conversations' images checked with the data
    data = tmp_path / "data.json"
    data.write_text(json.dumps([{"image": "bomb.png", "conversations": [
        {"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]}]))
    status = evaluate.main(["--model", "tiny-llava", "--data", str(data), "--images", str(tmp_path),
                            "--methods", "pool"])
    one_error(capsys, status, 2, "12000 x 12000")


# --- one error line ------------------------------------------------------------------------------

def test_evaluate_refuses_arguments_in_one_line(tmp_path, capsys, no_model_loaded):
    base = ["--model", "tiny-llava", "--data", "synthetic", "--methods", "pool"]
    for extra, says in [(["--seed", "-1"], "--seed"), (["--device", "bogus"], "--device"),
                        (["--samples", "x"], "--samples"),
                        (["--weights", str(tmp_path / "none.safetensors"), "--methods", "metacompress"],
                         "--weights")]:
        one_error(capsys, evaluate.main(base + extra), 2, says)
    nested = tmp_path / "nested.json"
    nested.write_text("[" * 100_000 + "]" * 100_000)
    (tmp_path / "images").mkdir()
    one_error(capsys, evaluate.main(["--model", "tiny-llava", "--data", str(nested), "--images",
                                     str(tmp_path / "images"), "--methods", "pool"]), 2, "nests")
    one_error(capsys, evaluate.main(["--model", str(tmp_path / "no-model"), "--data", "synthetic",
                                     "--methods", "pool"]), 2, "no such folder")
    one_error(capsys, evaluate.main(["--model", str(nested), "--data", "synthetic",
                                     "--methods", "pool"]), 2, "is a file")


@pytest.mark.parametrize("config", ["{ not json", json.dumps({"model_type": "bert"})])
def test_models_that_do_not_load_give_one_line(tmp_path, capsys, config):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(config)
    status = evaluate.main(["--model", str(model), "--data", "synthetic", "--methods", "pool",
                            "--samples", "1", "--device", "cpu"])
    one_error(capsys, status, 1, "--model", "cannot load it")
    status = export_features.main(["--model", str(model), "--synthetic-image", "1",
                                   "--output", str(tmp_path / "f.safetensors")])
    one_error(capsys, status, 1, "--model", "cannot load it")


def test_an_offline_hub_id_gives_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    status = evaluate.main(["--model", "nobody/no-such-model-34", "--data", "synthetic",
                            "--methods", "pool", "--samples", "1", "--device", "cpu"])
    one_error(capsys, status, 1, "nobody/no-such-model-34")


def test_export_features_refuses_in_one_line(tmp_path, capsys, no_model_loaded):
    image = tmp_path / "x.png"
    image.write_bytes(b"not an image")
    status = export_features.main(["--model", "tiny-llava", "--image", str(image),
                                   "--output", str(tmp_path / "f.safetensors")])
    one_error(capsys, status, 1, "not an image")
    status = export_features.main(["--model", "tiny-llava"])
    one_error(capsys, status, 2, "--output")

"""The Python commands' outputs under hostile use (issue 34, items 3 and 5): every writer
follows FORMATS.md "Writing outputs" (`metacompress.files`): an output that is an input, a
folder, of an unknown kind, or in a missing folder is refused in one line before any model
loads; a command's outputs are one set; a failed write leaves the old file whole."""
import json
from pathlib import Path

import pytest
from PIL import Image

from metacompress import files
from metacompress.evaluation import harness as evaluate
from metacompress.training import features as export_features

from conftest import one_error


def conversations(tmp_path: Path) -> tuple[Path, Path]:
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(images / "red.png")
    data = tmp_path / "data.json"
    data.write_text(json.dumps([{"image": "red.png", "conversations": [
        {"from": "human", "value": "<image>\nwhat colour?"}, {"from": "gpt", "value": "red"}]}]))
    return data, images


def refused(capsys, call, status: int, *says: str) -> str:
    return one_error(capsys, call(), status, *says)


def run_evaluate(data, images, *extra):
    return lambda: evaluate.main(["--model", "tiny-llava", "--data", str(data), "--images", str(images),
                                  "--methods", "pool", *map(str, extra)])


def test_evaluate_outputs_that_are_inputs_are_refused_before_the_model(tmp_path, capsys, no_model_loaded):
    data, images = conversations(tmp_path)
    before = data.read_bytes()
    refused(capsys, run_evaluate(data, images, "--json", data), 2, "--json", "--data")
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"weights")
    refused(capsys, run_evaluate(data, images, "--weights", weights, "--json", weights), 2, "--weights")
    refused(capsys, run_evaluate(data, images, "--plot", images / "red.png"), 2, "--plot", "image")
    link = tmp_path / "link.json"
    link.symlink_to(data)
    refused(capsys, run_evaluate(data, images, "--json", link), 2, "same file")
    assert data.read_bytes() == before and weights.read_bytes() == b"weights"
    assert Image.open(images / "red.png").size == (32, 32)


def test_evaluate_bad_outputs_are_refused_before_the_model(tmp_path, capsys, no_model_loaded):
    data, images = conversations(tmp_path)
    same = tmp_path / "same.png"
    refused(capsys, run_evaluate(data, images, "--json", same, "--plot", same), 2, "same file")
    (tmp_path / "folder").mkdir()
    refused(capsys, run_evaluate(data, images, "--plot", tmp_path / "folder"), 2, "--plot")
    refused(capsys, run_evaluate(data, images, "--json", tmp_path / "folder"), 2, "not a regular file")
    refused(capsys, run_evaluate(data, images, "--plot", tmp_path / "plot.bmpx"), 2, ".png")
    refused(capsys, run_evaluate(data, images, "--json", tmp_path / "missing" / "r.json"), 1, "missing")
    refused(capsys, run_evaluate(data, images, "--json", f"{tmp_path}/new/"), 2, "names a folder")
    assert not list(tmp_path.glob("folder.*")) and not (tmp_path / "same.png").exists()


def test_the_report_and_the_plot_are_one_set(tmp_path, capsys, monkeypatch):
    report, picture = tmp_path / "eval.json", tmp_path / "eval.png"
    report.write_text("old report")
    picture.write_bytes(b"old plot")

    def failing_plot(result, stream, format=None):
        stream.write(b"half a pic")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(evaluate, "plot", failing_plot)
    monkeypatch.setattr(evaluate, "evaluate", lambda args, plan: {
        "model": "m", "data": "d", "samples": 1, "questions": 1, "turns": 1, "seed": 0,
        "rows": [], "skipped": []})
    status = evaluate.main(["--model", "tiny-llava", "--data", "synthetic", "--methods", "pool",
                            "--json", str(report), "--plot", str(picture)])
    assert status == 1
    assert "No space left" in capsys.readouterr().err
    assert report.read_text() == "old report" and picture.read_bytes() == b"old plot"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.json", "eval.png"]


def test_export_features_output_that_is_its_image_is_refused(tmp_path, capsys, no_model_loaded):
    image = tmp_path / "photo.png"
    Image.new("RGB", (32, 32)).save(image)
    before = image.read_bytes()
    for output, status, says in [(image, 2, "--image"), (tmp_path, 2, "not a regular file"),
                                 (tmp_path / "missing" / "f.safetensors", 1, "missing")]:
        refused(capsys, lambda: export_features.main(["--model", "tiny-llava", "--image", str(image),
                                                      "--output", str(output)]), status, says)
    assert image.read_bytes() == before


def test_outputs_set_and_check_helpers(tmp_path):
    old = tmp_path / "a.bin"
    old.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with files.Outputs() as outputs:
            outputs.add_bytes(old, b"new")
            outputs.add_bytes(tmp_path / "b.bin", b"new")
            raise RuntimeError("a failure before the commit")
    assert old.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]
    with pytest.raises(files.OutputError) as raised:
        files.check_output("--json", tmp_path / "x.json", [("--data", tmp_path / "x.json")])
    assert raised.value.status == 2

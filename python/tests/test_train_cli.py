"""`python -m metacompress.train` on bad input: every argument and the data checked before the
model loads, one `error: ...` line on stderr, exit 2 (usage) or 1; outputs that are inputs
refused; the sidecar never replaces a file the trainer did not write; `--resume` refuses a
checkpoint of other settings; a loss that is not finite stops training and writes nothing;
outputs are written atomically with the modes a user expects. The JSON path runs on the tiny
models (a plain prompt format: they have no chat template)."""
import json
import os
import random
import stat
import subprocess
import sys

import pytest
import torch

import metacompress.training.trainer as train_module
from metacompress.tasks.synthetic import synthetic_image
from metacompress.training.trainer import main as train_main

ARGS = ["--keep", "0.25", "--dc", "16", "--pos", "4x4"]
CONVERSATION = [
    {"from": "human", "value": "<image>\nwhat is in the picture?"},
    {"from": "gpt", "value": "a red box."},
    {"from": "human", "value": "where is it?"},
    {"from": "gpt", "value": "on the left."},
]


@pytest.fixture
def no_model(monkeypatch):
    """Fails the test if the command gets as far as loading a model."""
    def refuse(*_):
        raise AssertionError("the model was loaded before the arguments were checked")
    monkeypatch.setattr(train_module, "load_model", refuse)


@pytest.fixture
def data(tmp_path):
    """A conversations file over two images: (data.json, images folder)."""
    images = tmp_path / "images"
    images.mkdir()
    records = []
    for index in range(2):
        synthetic_image(random.Random(index)).save(images / f"{index}.png")
        records.append({"image": f"{index}.png", "conversations": CONVERSATION})
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    return path, images


def refused(capsys, argv, code, *says):
    """Runs the command in-process; asserts exit `code` and one `error:` line holding `says`."""
    with pytest.raises(SystemExit) as exit_:
        train_main([str(a) for a in argv])
    assert exit_.value.code == code, (argv, exit_.value.code, capsys.readouterr().err)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for word in says:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def synthetic(tmp_path, *extra):
    return ["--model", "tiny-llava", "--data", "synthetic", "--output", tmp_path / "w.safetensors",
            *ARGS, *extra]


# --- arguments (exit 2, before the model loads) -----------------------------------------------

@pytest.mark.parametrize("extra, says", [
    (["--steps", "0"], "--steps"),
    (["--steps", "-1"], "--steps"),
    (["--epochs", "0"], "--epochs"),
    (["--checkpoint-every", "0"], "--checkpoint-every"),
    (["--samples", "0"], "--samples"),
    (["--batch", "0"], "--batch"),
    (["--dc", "0"], "--dc"),
    (["--pos", "0x0"], "--pos"),
    (["--pos", "4x"], "--pos"),
    (["--alpha-entropy", "nan"], "--alpha-entropy"),
    (["--alpha-collapse", "inf"], "--alpha-collapse"),
    (["--alpha-entropy", "-1"], "--alpha-entropy"),
    (["--lr", "nan"], "--lr"),
    (["--lr", "0"], "--lr"),
    (["--weight-decay", "nan"], "--weight-decay"),
    (["--clip", "nan"], "--clip"),
    (["--keep", "nan"], "--keep"),
    (["--keep", "0"], "--keep"),
    (["--steps", "abc"], "--steps"),
    (["--scope", "rows"], "--scope"),
    (["--seed", "-1"], "--seed"),
])
def test_bad_arguments_are_refused_before_the_model_loads(tmp_path, capsys, no_model, extra, says):
    refused(capsys, synthetic(tmp_path, *extra), 2, says)
    assert not (tmp_path / "w.safetensors").exists()


def test_synthetic_data_needs_a_tiny_model(tmp_path, capsys, no_model):
    refused(capsys, ["--model", "some/model", "--data", "synthetic", "--output", tmp_path / "w.safetensors"],
            2, "synthetic")


def test_a_json_output_would_be_its_own_sidecar(tmp_path, capsys, no_model):
    refused(capsys, ["--model", "tiny-llava", "--data", "synthetic", "--output", tmp_path / "w.json"],
            2, "--output", "w.json")


def test_an_output_folder_that_does_not_exist_is_refused_before_training(tmp_path, capsys, no_model):
    refused(capsys, ["--model", "tiny-llava", "--data", "synthetic",
                     "--output", tmp_path / "missing" / "w.safetensors"], 1, "missing")


def test_an_output_that_is_a_folder_is_refused(tmp_path, capsys, no_model):
    (tmp_path / "w.safetensors").mkdir()
    refused(capsys, synthetic(tmp_path), 2, "not a regular file")


def test_a_checkpoint_that_is_a_file_is_refused_before_training(tmp_path, capsys, no_model):
    (tmp_path / "ckpt").write_text("not a folder")
    refused(capsys, synthetic(tmp_path, "--checkpoint", tmp_path / "ckpt"), 2, "--checkpoint", "ckpt")


def test_resume_needs_a_checkpoint_holding_state(tmp_path, capsys, no_model):
    refused(capsys, synthetic(tmp_path, "--resume"), 2, "--resume")
    (tmp_path / "ckpt").mkdir()
    refused(capsys, synthetic(tmp_path, "--resume", "--checkpoint", tmp_path / "ckpt"), 1, "state.pt")


# --- the sidecar --------------------------------------------------------------------------------

def test_a_sidecar_never_replaces_a_file_the_trainer_did_not_write(tmp_path, capsys, no_model):
    (tmp_path / "w.json").write_text('{"mine": true}\n')
    refused(capsys, synthetic(tmp_path), 2, "w.json")
    assert (tmp_path / "w.json").read_text() == '{"mine": true}\n'
    (tmp_path / "w.json").write_text("plain text")
    refused(capsys, synthetic(tmp_path), 2, "w.json")


def test_a_sidecar_that_is_a_folder_fails_before_the_weights_change(tmp_path, capsys, no_model):
    (tmp_path / "w.safetensors").write_bytes(b"old weights")
    (tmp_path / "w.json").mkdir()
    refused(capsys, synthetic(tmp_path), 2, "w.json")
    assert (tmp_path / "w.safetensors").read_bytes() == b"old weights"


def test_the_trainers_own_sidecar_is_replaced(tmp_path):
    output = tmp_path / "w.safetensors"
    train_main([str(a) for a in synthetic(tmp_path, "--steps", "1", "--samples", "2", "--batch", "2")])
    first = json.loads((tmp_path / "w.json").read_text())
    assert first["steps"] == 1
    train_main([str(a) for a in synthetic(tmp_path, "--steps", "2", "--samples", "2", "--batch", "2")])
    assert json.loads((tmp_path / "w.json").read_text())["steps"] == 2
    assert output.exists()


# --- outputs that are inputs (exit 2, before any work) ------------------------------------------

def test_an_output_that_is_an_input_is_refused(tmp_path, capsys, no_model, data):
    path, images = data
    before = path.read_bytes(), (images / "0.png").read_bytes()
    base = ["--model", "tiny-llava", "--data", path, "--images", images, *ARGS]
    refused(capsys, base + ["--output", path], 2, "data.json")                       # the sidecar too
    refused(capsys, base + ["--output", images / "0.png"], 2, "0.png")
    refused(capsys, base + ["--output", tmp_path / "data.safetensors"], 2, "data.json")  # its sidecar
    # through another spelling of the same path
    refused(capsys, base + ["--output", images / ".." / "images" / "1.png"], 2, "1.png")
    assert (path.read_bytes(), (images / "0.png").read_bytes()) == before


def test_an_output_inside_the_model_folder_is_refused(tmp_path, capsys, no_model, data):
    path, images = data
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"the model")
    (model / "config.json").write_text("{}")
    base = ["--model", model, "--data", path, "--images", images, *ARGS]
    refused(capsys, base + ["--output", model / "model.safetensors"], 2, "model.safetensors")
    refused(capsys, base + ["--output", model / "config.safetensors"], 2, "config.json")
    refused(capsys, base + ["--output", model], 2)
    assert (model / "model.safetensors").read_bytes() == b"the model"


def test_earlier_outputs_in_the_model_folder_are_replaced(tmp_path, no_model, data):
    from metacompress.torch import PMeta
    path, images = data
    model = tmp_path / "model"
    model.mkdir()
    PMeta.init(8, 4).save(model / "pmeta.safetensors")
    (model / "pmeta.json").write_text(json.dumps({"format": "metacompress.train", "steps": 3}))
    with pytest.raises(AssertionError, match="model was loaded"):   # every check passed
        train_main(["--model", str(model), "--data", str(path), "--images", str(images),
                    "--output", str(model / "pmeta.safetensors")])


def test_an_output_that_is_the_init_weights_or_the_checkpoint_is_refused(tmp_path, capsys, no_model):
    init = tmp_path / "init.safetensors"
    init.write_bytes(b"init")
    refused(capsys, synthetic(tmp_path, "--init", init, "--output", init), 2, "init.safetensors")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    refused(capsys, synthetic(tmp_path, "--checkpoint", ckpt, "--output", ckpt / "state.pt"), 2, "state.pt")
    (ckpt / "state.pt").write_bytes(b"state")
    refused(capsys, synthetic(tmp_path, "--checkpoint", ckpt, "--resume", "--output", ckpt / "state.pt"),
            2, "state.pt")
    assert (ckpt / "state.pt").read_bytes() == b"state" and init.read_bytes() == b"init"


# --- data (exit 1, before the model loads) -------------------------------------------------------

@pytest.mark.parametrize("content, says", [
    ("{not json", "JSON"),
    ('{"image": "0.png", "conversations": []}', "list"),
    ("[]", "empty"),
    ('[{"image": "0.png"}]', "conversations"),
    ('[{"conversations": []}]', "image"),
    ('[{"image": "0.png", "conversations": [{"from": "human", "value": "<image> hi"}]}]', "answer"),
    ('[{"image": "0.png", "conversations": [{"from": "robot", "value": "<image>"}, '
     '{"from": "gpt", "value": "x"}]}]', "robot"),
    ('[{"image": "0.png", "conversations": [{"from": "human", "value": "hi"}, '
     '{"from": "gpt", "value": "x"}]}]', "<image>"),
    ('[{"image": "missing.png", "conversations": [{"from": "human", "value": "<image> hi"}, '
     '{"from": "gpt", "value": "x"}]}]', "missing.png"),
    ('[{"image": "notes.txt", "conversations": [{"from": "human", "value": "<image> hi"}, '
     '{"from": "gpt", "value": "x"}]}]', "notes.txt"),
    ('[3]', "record 0"),
])
def test_bad_data_is_refused_before_the_model_loads(tmp_path, capsys, no_model, data, content, says):
    path, images = data
    (images / "notes.txt").write_text("not an image")
    path.write_text(content)
    refused(capsys, ["--model", "tiny-llava", "--data", path, "--images", images,
                     "--output", tmp_path / "w.safetensors"], 1, says)


def test_a_missing_data_file_or_image_folder_is_refused(tmp_path, capsys, no_model, data):
    path, images = data
    out = ["--output", tmp_path / "w.safetensors"]
    refused(capsys, ["--model", "tiny-llava", "--data", tmp_path / "nope.json", "--images", images, *out],
            1, "nope.json")
    refused(capsys, ["--model", "tiny-llava", "--data", path, *out], 2, "--images")
    refused(capsys, ["--model", "tiny-llava", "--data", path, "--images", tmp_path / "nowhere", *out],
            1, "nowhere")


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-llava-next", "tiny-qwen2-vl"])
def test_a_conversations_file_trains_a_tiny_model(tmp_path, data, name):
    path, images = data
    output = tmp_path / "w.safetensors"
    train_main(["--model", name, "--data", str(path), "--images", str(images), "--steps", "1",
                "--batch", "2", "--output", str(output), *ARGS])
    assert output.exists() and json.loads((tmp_path / "w.json").read_text())["steps"] == 1


# --- resume ---------------------------------------------------------------------------------------

def test_resume_refuses_a_checkpoint_of_other_settings(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    base = ["--data", "synthetic", "--samples", "2", "--batch", "2", "--dc", "16", "--pos", "4x4",
            "--checkpoint", str(ckpt), "--output", str(tmp_path / "w.safetensors")]
    train_main(["--model", "tiny-llava", "--keep", "0.25", "--steps", "1", *base])
    state = (ckpt / "state.pt").read_bytes()
    capsys.readouterr()
    for model, keep, scope, says in [("tiny-llava-next", "0.25", "image", "--model"),
                                     ("tiny-llava", "0.5", "image", "--keep"),
                                     ("tiny-llava", "0.25", "grid", "--scope")]:
        refused(capsys, ["--model", model, "--keep", keep, "--scope", scope, "--steps", "2", "--resume",
                         *base], 2, says)
    assert (ckpt / "state.pt").read_bytes() == state
    refused(capsys, ["--model", "tiny-llava", "--keep", "0.25", "--steps", "2", "--resume",
                     *base, "--dc", "8"], 2, "--dc")


# --- a loss that is not finite; atomic writes and modes ------------------------------------------

def test_a_loss_that_is_not_finite_stops_training_and_writes_nothing(tmp_path, capsys, monkeypatch):
    real, calls = train_module.losses, []

    def poisoned(*args, **kwargs):
        parts = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            parts["total"] = parts["total"] * float("nan")
        return parts

    monkeypatch.setattr(train_module, "losses", poisoned)
    output = tmp_path / "w.safetensors"
    output.write_bytes(b"old weights")
    with pytest.raises(SystemExit) as exit_:
        train_main([str(a) for a in synthetic(tmp_path, "--steps", "4", "--samples", "4", "--batch", "2")])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "step 2" in errors[0] and "not finite" in errors[0], err
    assert "Traceback" not in err
    assert output.read_bytes() == b"old weights" and not (tmp_path / "w.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]


def test_outputs_get_the_modes_a_user_expects(tmp_path):
    old = os.umask(0o027)
    try:
        train_main([str(a) for a in synthetic(tmp_path, "--steps", "1", "--samples", "2", "--batch", "2",
                                              "--checkpoint", tmp_path / "ckpt")])
        mode = lambda p: stat.S_IMODE(p.stat().st_mode)
        assert mode(tmp_path / "w.safetensors") == 0o640
        assert mode(tmp_path / "w.json") == 0o640
        assert mode(tmp_path / "ckpt" / "state.pt") == 0o640
        (tmp_path / "w.safetensors").chmod(0o604)
        (tmp_path / "w.json").chmod(0o600)
        train_main([str(a) for a in synthetic(tmp_path, "--steps", "1", "--samples", "2", "--batch", "2")])
        assert mode(tmp_path / "w.safetensors") == 0o604 and mode(tmp_path / "w.json") == 0o600
    finally:
        os.umask(old)
    leftovers = [p.name for p in tmp_path.rglob("*") if "partial" in p.name or p.name.startswith(".")]
    assert leftovers == []


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    from metacompress.files import write_atomically
    target = tmp_path / "w.safetensors"
    target.write_bytes(b"old")

    def half(stream):
        stream.write(b"new but ")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(target, half)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


# --- the command itself -----------------------------------------------------------------------------

@pytest.mark.parametrize("extra, code", [(["--steps", "0"], 2), (["--data", "nope.json", "--images", "."], 1)])
def test_the_command_prints_one_error_line(tmp_path, extra, code):
    argv = ["--model", "tiny-llava", "--data", "synthetic", "--output", str(tmp_path / "w.safetensors"), *extra]
    result = subprocess.run([sys.executable, "-m", "metacompress.train", *argv], capture_output=True,
                            text=True, cwd=tmp_path)
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr

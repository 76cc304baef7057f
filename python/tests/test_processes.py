"""Training and evaluation across processes (SPEC sections 10 and 12), launched as a user
launches them, `accelerate launch --config_file ...`, with 2 CPU processes (gloo) on the tiny
models: 2 processes train the P_meta 1 process trains with the same global batch, seed and data
order; a run stopped by one process's failure (one `error:` line, every process ending in
bounded time) and resumed from its checkpoint ends where an uninterrupted run does; a bad
argument stops every process with one line; only the first process writes and prints; sharded
evaluation prints the table and writes the JSON of one process (timings aside).

The config is accelerate's local multi-process one (what `accelerate config` writes for 8 GPUs,
here with 2 processes); with the accelerators hidden and ACCELERATE_USE_CPU=1 its processes run
on the CPU with gloo, one thread each."""
import io
import json
import os
import pathlib
import random
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import metacompress
from metacompress.evaluation import harness
from metacompress.tasks.synthetic import synthetic_image
from metacompress.training.trainer import main as train_main, order
from test_train_cli import CONVERSATION

ARGS = ["--keep", "0.25", "--dc", "16", "--pos", "4x4", "--lr", "3e-3", "--seed", "3"]
CONFIG = """compute_environment: LOCAL_MACHINE
distributed_type: MULTI_GPU
num_machines: 1
machine_rank: 0
num_processes: 2
main_process_ip: 127.0.0.1
main_process_port: {port}
mixed_precision: 'no'
use_cpu: false
"""
LIMIT_S = 240   # a launch takes ~30 s here; a hang would be killed (and fail the test) at this


def free_port() -> int:
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        return bound.getsockname()[1]


def launch(tmp_path, module, *argv):
    """`accelerate launch --config_file C -m module argv` with 2 CPU processes; the finished
    process (exit status, stdout, stderr)."""
    config = tmp_path / f"accelerate-{free_port()}.yaml"
    config.write_text(CONFIG.format(port=free_port()))
    package = str(pathlib.Path(metacompress.__file__).resolve().parents[1])
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", ACCELERATE_USE_CPU="1",
               CUDA_VISIBLE_DEVICES="", PYTHONPATH=os.pathsep.join([package, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
                           "-m", module, *map(str, argv)], capture_output=True, text=True, env=env,
                          timeout=LIMIT_S, cwd=tmp_path)


def ours(stderr: str) -> list[str]:
    """The lines the command printed (not the launcher's, nor progress bars)."""
    return [line for line in stderr.replace("\r", "\n").splitlines()
            if line.startswith(("error:", "trained "))]


def assert_same_weights(a, b, tolerance=1e-5):
    a, b = load_file(str(a)), load_file(str(b))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=0, atol=tolerance), (name, (a[name] - b[name]).abs().max())


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_two_processes_train_the_weights_of_one(tmp_path, capsys):
    # 10 conversations, a global batch of 4: each epoch ends with a batch of 2, all of it in
    # the first process's share (the second runs one conversation weighted 0).
    common = ["--model", "tiny-llava-next", "--data", "synthetic", "--samples", "10", "--steps", "5", *ARGS]
    one = tmp_path / "one"
    one.mkdir()
    train_main([str(a) for a in common + ["--batch", "4", "--output", one / "w.safetensors"]])
    single = ours(capsys.readouterr().err)
    two = tmp_path / "two"
    two.mkdir()
    result = launch(two, "metacompress.train", *common, "--batch", "2", "--output", two / "w.safetensors")
    assert result.returncode == 0, result.stderr[-3000:]
    printed = ours(result.stderr)
    assert len(printed) == 1 and "global batch 4 (2 processes x 2)" in printed[0], result.stderr[-3000:]
    # The losses reported are the global batch's: the single process's, up to float order.
    numbers = lambda line: [float(word.strip("(),;")) for word in line.split() if word[0].isdigit() and "." in word]
    assert np.allclose(numbers(printed[0]), numbers(single[0]), atol=1e-4), (printed, single)
    assert_same_weights(one / "w.safetensors", two / "w.safetensors")
    assert sorted(p.name for p in two.iterdir() if not p.name.endswith(".yaml")) == ["w.json", "w.safetensors"]
    sidecar = json.loads((two / "w.json").read_text())
    assert (sidecar["processes"], sidecar["batch"], sidecar["steps"]) == (2, 4, 5)


def jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (96, 96, 3), dtype=np.uint8)
    stream = io.BytesIO()
    Image.fromarray(pixels).save(stream, "JPEG")
    return stream.getvalue()


def test_a_failing_process_stops_all_and_the_run_resumes_to_the_uninterrupted_weights(tmp_path, capsys):
    """16 conversations, global batch 4 (2 x 2): the image of the conversation that step 4
    gives the second process is truncated (PIL reads its header, so the checks pass; its
    pixels fail). Every process stops with one line and the checkpoint of step 3; the image
    repaired, `--resume` ends where one process, never stopped, ends."""
    images = tmp_path / "images"
    images.mkdir()
    records = []
    for index in range(16):
        synthetic_image(random.Random(index)).save(images / f"{index}.png")
        records.append({"image": f"{index}.png", "conversations": CONVERSATION})
    bad = order(16, 3, 0)[3 * 4 + 2]   # step 4's global batch, the second process's share
    records[bad]["image"] = "bad.jpg"
    (tmp_path / "data.json").write_text(json.dumps(records))
    common = ["--model", "tiny-llava", "--data", tmp_path / "data.json", "--images", images, "--steps", "6", *ARGS]
    good = jpeg(bad)
    (images / "bad.jpg").write_bytes(good[:len(good) * 3 // 4])
    run = tmp_path / "run"
    run.mkdir()
    stopped = launch(run, "metacompress.train", *common, "--batch", "2", "--output", run / "w.safetensors",
                     "--checkpoint", run / "checkpoint", "--checkpoint-every", "1")
    assert stopped.returncode != 0
    printed = ours(stopped.stderr)
    assert len(printed) == 1 and "truncated" in printed[0] and f"record {bad}" in printed[0], stopped.stderr[-3000:]
    assert not (run / "w.safetensors").exists()
    assert torch.load(run / "checkpoint" / "state.pt", weights_only=False)["step"] == 3
    (images / "bad.jpg").write_bytes(good)
    resumed = launch(run, "metacompress.train", *common, "--batch", "2", "--output", run / "w.safetensors",
                     "--checkpoint", run / "checkpoint", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    state = torch.load(run / "checkpoint" / "state.pt", weights_only=False)
    assert state["step"] == 6 and len(state["rng_by_process"]) == 2
    straight = tmp_path / "straight.safetensors"
    train_main([str(a) for a in common + ["--batch", "4", "--output", straight]])
    assert_same_weights(straight, run / "w.safetensors")


def test_a_bad_argument_stops_every_process_with_one_line(tmp_path):
    result = launch(tmp_path, "metacompress.train", "--model", "tiny-llava", "--data", "synthetic",
                    "--steps", "0", "--output", tmp_path / "w.safetensors")
    assert result.returncode != 0
    printed = ours(result.stderr)
    assert len(printed) == 1 and "--steps 0" in printed[0], result.stderr[-3000:]


def without_timings(result: dict) -> dict:
    for row in result["rows"]:
        row.pop("prefill_s")
    return result


def test_sharded_evaluation_is_the_single_process_one(tmp_path, capsys):
    # 5 images: the first process measures 3, the second 2.
    argv = ["--model", "tiny-llava-next", "--data", "synthetic", "--samples", "5", "--turns", "2",
            "--methods", "all", "--keep", "0.25", "--weights", "init", "--dc", "16", "--max-new-tokens", "3",
            "--backend", "cpu"]
    assert harness.main(argv + ["--json", str(tmp_path / "one.json")]) == 0
    single = capsys.readouterr().out
    result = launch(tmp_path, "metacompress.evaluate", *argv, "--json", tmp_path / "two.json")
    assert result.returncode == 0, result.stderr[-3000:]
    table = lambda text: [line[:58] for line in text.splitlines()]   # up to the timings' column
    assert table(result.stdout) == table(single)
    assert without_timings(json.loads((tmp_path / "two.json").read_text())) == \
        without_timings(json.loads((tmp_path / "one.json").read_text()))

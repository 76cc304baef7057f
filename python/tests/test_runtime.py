"""The native runtime through the Python API (SPEC section 8), checked against the command
line: every method against `metacompress compress --backend reference` (float64) on the same
inputs written to files, the layouts against `metacompress layout --json`, the errors against
the command line's lines. Seeds are printed (pytest -s, or on failure) for replay."""
import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from safetensors.torch import save_file as save_torch_file

import metacompress as mc
from conftest import run

METHODS = ["metacompress", "pool", "sample", "random", "tome", "divprune", "visionzip", "prumerge"]


def relative(out, ref):
    out, ref = np.asarray(out, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    return np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-30)


def random_layout(rng):
    """A base grid, a strided grid with loose tokens after each row, loose tokens at the end:
    `(n, grids)` with odd sizes."""
    h1, w1 = int(rng.integers(2, 8)), int(rng.integers(2, 8))
    h2, w2 = int(rng.integers(1, 7)), int(rng.integers(2, 9))
    stride = w2 + int(rng.integers(1, 3))
    offset = h1 * w1 + int(rng.integers(0, 3))
    n = offset + (h2 - 1) * stride + w2 + int(rng.integers(0, 4))
    return n, [(0, h1, w1), (offset, h2, w2, stride)]


def grid_flags(grids):
    flags = []
    for grid in grids:
        offset, h, w = grid[:3]
        stride = grid[3] if len(grid) == 4 else w
        flags += ["--grid", f"{h}x{w}@{offset}/{stride}"]
    return flags


def cli_reference(binary, tmp_path, values, grids, attention, method, keep, scope, seed, weights):
    """tokens and P from the command line's float64 reference on the same inputs."""
    source, output = tmp_path / "input.safetensors", tmp_path / "output.safetensors"
    source.unlink(missing_ok=True)
    output.unlink(missing_ok=True)
    tensors = {"features": values}
    if attention is not None:
        tensors["attention"] = torch.from_numpy(attention) if isinstance(values, torch.Tensor) else attention
    (save_torch_file if isinstance(values, torch.Tensor) else save_file)(tensors, str(source))
    args = ["compress", "--backend", "reference", "--input", source, "--output", output,
            "--method", method, "--keep", keep, "--scope", scope, "--seed", seed,
            "--output-dtype", "f32", "--save-projection", *grid_flags(grids)]
    if weights is not None:
        args += ["--weights", weights]
    run(binary, *args)
    result = load_file(str(output))
    return result["tokens"], result["projection"]


@pytest.fixture(scope="module")
def weights_for(binary, tmp_path_factory):
    """P_meta files by width (the paper's initialisation with a position table)."""
    folder, made = tmp_path_factory.mktemp("weights"), {}

    def weights(d):
        if d not in made:
            path = folder / f"pmeta-{d}.safetensors"
            run(binary, "init", "--dim", d, "--dc", min(d, 16), "--pos", "3x5", "--seed", d,
                "--output", path)
            made[d] = path
        return made[d]

    return weights


def as_input(values, kind):
    """f32 values as the test's input kind: numpy f32/f16 or torch bf16."""
    if kind == "numpy-f32":
        return values
    if kind == "numpy-f16":
        return values.astype(np.float16)
    return torch.from_numpy(values).to(torch.bfloat16)


def to_numpy(values):
    if isinstance(values, torch.Tensor):
        return values.float().numpy()
    return np.asarray(values, dtype=np.float32)


@pytest.mark.parametrize("kind", ["numpy-f32", "numpy-f16", "torch-bf16"])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_matches_the_float64_reference(binary, tmp_path, weights_for, seed, method, kind):
    rng = np.random.default_rng(seed)
    compressors = {}
    for case in range(2):
        n, grids = random_layout(rng)
        d = int(rng.choice([7, 19, 33]))
        batch = int(rng.choice([0, 1, 3]))  # 0: one image as (n, d)
        shape = (n, d) if batch == 0 else (batch, n, d)
        values = rng.standard_normal(shape).astype(np.float32)
        x = as_input(values, kind)
        attention = rng.random(shape[:-1]).astype(np.float32) + 0.01
        keep = float(rng.uniform(0.05, 0.7))
        scope = ["image", "grid"][case]
        weights = weights_for(d) if method == "metacompress" else None
        key = (d, weights is not None)
        if key not in compressors:
            compressors[key] = mc.Compressor(weights, backend="cpu")
        context = f"seed {seed} case {case}: n {n} d {d} shape {shape} grids {grids} keep {keep} scope {scope}"
        result = compressors[key].compress(
            x, grids=grids, keep=keep, scope=scope, method=method, seed=seed,
            attention=attention if method in ("visionzip", "prumerge") else None, projection=True,
        )
        # The file holds exactly the values the runtime read (f16 and bf16 as they are).
        file_values = x if kind != "numpy-f32" else values
        ref_tokens, ref_projection = cli_reference(
            binary, tmp_path, file_values, grids, attention, method, keep, scope, seed, weights)
        m = sum(hq * wq for hq, wq in result.queries)
        assert result.tokens.shape == shape[:-2] + (m, d), context
        assert result.projection.shape == shape[:-2] + (m, n), context
        assert ref_tokens.shape == tuple(result.tokens.shape), context
        if kind == "torch-bf16":
            assert isinstance(result.tokens, torch.Tensor) and result.tokens.dtype == torch.bfloat16
            assert isinstance(result.projection, torch.Tensor) and result.projection.dtype == torch.float32
        else:
            assert result.tokens.dtype == x.dtype and result.projection.dtype == np.float32
        bound = 1e-4 if kind == "numpy-f32" else 1e-2
        assert relative(to_numpy(result.tokens), ref_tokens) <= bound, context
        assert relative(to_numpy(result.projection), ref_projection) <= 1e-4, context


def test_projection_only_when_asked(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 36, 8)).astype(np.float32)
    compressor = mc.Compressor(None, backend="cpu")
    for method in ["pool", "tome"]:
        assert compressor.compress(x, method=method).projection is None
        assert compressor.compress(x, method=method, projection=True).projection.shape == (2, 4, 36)


@pytest.mark.parametrize("preset,pinpoints", [
    ("llava-1.5", None),
    ("llava-next:672x672", None),
    ("llava-next:1000x667", None),
    ("llava-next:800x1200", [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008], [1008, 1008]]),
    ("qwen2-vl:1x28x42", None),
    ("qwen2-vl:3x16x20", None),
])
def test_layout_equals_the_command_line(binary, preset, pinpoints):
    args = ["layout", preset, "--json"]
    if pinpoints is not None:
        args += ["--pinpoints", json.dumps(pinpoints)]
    expected = json.loads(run(binary, *args))
    n, grids = mc.layout(preset, pinpoints=pinpoints)
    assert n == expected["n"]
    assert [list(grid) for grid in grids] == expected["grids"]
    if pinpoints is not None:
        assert mc.layout(preset, pinpoints=json.dumps(pinpoints)) == (n, grids)


def test_layout_preset_in_a_call_equals_its_grids(seed):
    rng = np.random.default_rng(seed)
    n, grids = mc.layout("llava-next:1000x667")
    x = rng.standard_normal((n, 16)).astype(np.float32)
    compressor = mc.Compressor(None, backend="cpu")
    by_preset = compressor.compress(x, layout="llava-next:1000x667", method="pool")
    by_grids = compressor.compress(x, grids=grids, method="pool")
    assert np.array_equal(by_preset.tokens, by_grids.tokens)
    assert by_preset.queries == by_grids.queries


def test_torch_in_torch_out_in_the_input_dtype(seed):
    rng = np.random.default_rng(seed)
    values = rng.standard_normal((3, 64, 12)).astype(np.float32)
    compressor = mc.Compressor(None, backend="cpu")
    reference = compressor.compress(values, method="pool", keep=0.25).tokens
    for dtype in [torch.float32, torch.float16, torch.bfloat16]:
        x = torch.from_numpy(values).to(dtype).requires_grad_()
        tokens = compressor.compress(x, method="pool", keep=0.25).tokens
        assert isinstance(tokens, torch.Tensor) and tokens.dtype == dtype and tokens.shape == (3, 16, 12)
        assert relative(tokens.float().numpy(), reference) < 1e-2, dtype


def test_read_only_and_memory_mapped_arrays_are_read_in_place(tmp_path, seed):
    rng = np.random.default_rng(seed)
    values = rng.standard_normal((4, 100, 24)).astype(np.float32)
    compressor = mc.Compressor(None, backend="cpu")
    expected = compressor.compress(values, method="pool").tokens
    frozen = values.copy()
    frozen.setflags(write=False)
    assert np.array_equal(compressor.compress(frozen, method="pool").tokens, expected)
    path = tmp_path / "x.f32"
    values.tofile(path)
    mapped = np.memmap(path, dtype=np.float32, mode="r", shape=values.shape)
    assert np.array_equal(compressor.compress(mapped, method="pool").tokens, expected)
    # The input is untouched and still readable and writable by others afterwards.
    writable = values.copy()
    compressor.compress(writable, method="pool")
    writable[0, 0, 0] = 1.0


PEAK_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import metacompress as mc
    from metacompress.memory import peak_reset, peak_since_reset
    kind, weights = sys.argv[1], sys.argv[2]
    b, n, d = 12, 2928, 512
    rng = np.random.default_rng(0)
    if kind == "bf16":
        import torch
        x = torch.empty((b, n, d), dtype=torch.bfloat16)
        for image in range(b):
            x[image] = torch.from_numpy(rng.standard_normal((n, d), dtype=np.float32))
        size = x.numel() * x.element_size()
    else:
        x = np.empty((b, n, d), dtype=np.float32)
        for image in range(b):
            x[image] = rng.standard_normal((n, d), dtype=np.float32)
        size = x.nbytes
    compressor = mc.Compressor(weights, backend="cpu")
    grids = mc.layout("llava-next:672x672")[1]
    # Warm: the thread pool and the weights, on each of the pool's threads (a call runs on one
    # of them, which keeps its scratch buffers).
    for _ in range(4):
        compressor.compress(x[:2], grids=grids)
    before = peak_reset()
    tokens = compressor.compress(x, grids=grids).tokens
    print(size, tokens.numel() * tokens.element_size() if kind == "bf16" else tokens.nbytes,
          peak_since_reset() - before)
""")


@pytest.mark.parametrize("kind", ["f32", "bf16"])
def test_a_call_does_not_copy_x(binary, tmp_path, kind):
    """Peak memory of a fresh interpreter: a call raises it by far less than x's size (a copy
    of x would raise it by at least that much)."""
    weights = tmp_path / "w.safetensors"
    run(binary, "init", "--dim", 512, "--dc", 64, "--pos", "24x24", "--output", weights)
    result = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, kind, str(weights)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    size, out, raised = map(int, result.stdout.split())
    print(f"{kind}: x {size >> 20} MiB, output {out >> 20} MiB, peak raised by {raised >> 20} MiB")
    assert raised < out + size / 4, (size, out, raised)


def test_one_compressor_shared_by_four_threads(weights_for, seed):
    rng = np.random.default_rng(seed)
    n, grids = random_layout(rng)
    inputs = [rng.standard_normal((2, n, 19)).astype(np.float32) for _ in range(8)]
    compressor = mc.Compressor(weights_for(19), backend="cpu")
    calls = [(x, method) for x in inputs for method in ["metacompress", "tome", "random"]]

    def call(item):
        x, method = item
        return compressor.compress(x, grids=grids, method=method, seed=seed, projection=True)

    alone = [call(item) for item in calls]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(call, calls * 3))
    for index, result in enumerate(together):
        expected = alone[index % len(calls)]
        assert np.array_equal(result.tokens, expected.tokens), f"seed {seed} call {index}"
        assert np.array_equal(result.projection, expected.projection), f"seed {seed} call {index}"


def test_the_gil_is_released_during_a_call(weights_for):
    x = np.random.default_rng(0).standard_normal((24, 2928, 64)).astype(np.float32)
    grids = mc.layout("llava-next:672x672")[1]
    compressor = mc.Compressor(weights_for(64), backend="cpu", threads=1)
    started, counted = threading.Event(), []
    done = threading.Event()

    def work():
        started.set()
        compressor.compress(x, grids=grids)
        done.set()

    thread = threading.Thread(target=work)
    thread.start()
    started.wait()
    count = 0
    while not done.is_set():
        count += 1
    thread.join()
    counted.append(count)
    # With the GIL held for the call, this loop could not run while it lasts.
    assert count > 1000, count


def test_a_gpu_backend_agrees_with_the_cpu_path(weights_for, seed):
    """On the first Vulkan adapter (Mesa's lavapipe without a GPU): metacompress and a
    baseline, f32 and f16 inputs, shared by threads, against the CPU path."""
    if not any(entry["backend"] == "vulkan" for entry in mc.devices()):
        if os.environ.get("CI"):
            pytest.fail("no Vulkan adapter (CI is set)")
        pytest.skip("NO VULKAN ADAPTER: the GPU path through Python is not tested here")
    rng = np.random.default_rng(seed)
    n, grids = random_layout(rng)
    x = rng.standard_normal((3, n, 19)).astype(np.float32)
    gpu = mc.Compressor(weights_for(19), backend="vulkan")
    cpu = mc.Compressor(weights_for(19), backend="cpu")
    assert "vulkan" in gpu.device.lower() or "llvmpipe" in gpu.device.lower(), gpu.device
    for method in ["metacompress", "pool"]:
        for values in [x, x.astype(np.float16)]:
            ours = gpu.compress(values, grids=grids, method=method, keep=0.3, projection=True)
            theirs = cpu.compress(values, grids=grids, method=method, keep=0.3, projection=True)
            bound = 1e-4 if values.dtype == np.float32 else 1e-2
            assert ours.tokens.dtype == values.dtype
            assert relative(ours.tokens, theirs.tokens) <= bound, f"seed {seed} {method} {values.dtype}"
            assert relative(ours.projection, theirs.projection) <= 1e-4, f"seed {seed} {method}"
    from concurrent.futures import ThreadPoolExecutor

    alone = gpu.compress(x, grids=grids).tokens
    with ThreadPoolExecutor(4) as pool:
        for tokens in pool.map(lambda _: gpu.compress(x, grids=grids).tokens, range(8)):
            assert np.array_equal(tokens, alone), f"seed {seed}"


def test_threads_and_device():
    assert "1 thread" in mc.Compressor(None, backend="cpu", threads=1).device
    compressor = mc.Compressor(None, backend="cpu")
    assert compressor.device.startswith("cpu")
    assert isinstance(mc.devices(), list)
    for entry in mc.devices():
        assert {"name", "backend", "type", "driver", "f16"} <= set(entry)


def cli_line(binary, tmp_path, *args):
    """The command line's error line (without its prefix) and exit status."""
    result = subprocess.run([binary, *map(str, args)], capture_output=True, text=True)
    line = result.stderr.strip()
    assert line.startswith("metacompress: "), line
    line = line[len("metacompress: "):]
    return re.sub(r" \(see metacompress --help\)$", "", line), result.returncode


@pytest.fixture
def features_file(tmp_path):
    path = tmp_path / "features.safetensors"
    save_file({"features": np.random.default_rng(1).standard_normal((36, 8)).astype(np.float32)}, str(path))
    return path


def expect(error_class, call):
    with pytest.raises(error_class) as raised:
        call()
    assert type(raised.value) is error_class
    return str(raised.value)


def still_alive():
    x = np.ones((16, 4), dtype=np.float32)
    assert mc.Compressor(None, backend="cpu").compress(x, method="pool", keep=0.25).tokens.shape == (4, 4)


def test_errors_carry_the_command_lines_line(binary, tmp_path, features_file, weights_for):
    assert issubclass(mc.UsageError, ValueError) and issubclass(mc.Error, RuntimeError)
    x = np.random.default_rng(1).standard_normal((36, 8)).astype(np.float32)
    compressor = mc.Compressor(None, backend="cpu")
    out = tmp_path / "out.safetensors"
    common = ["compress", "--backend", "cpu", "--input", features_file, "--output", out]

    # keep outside (0, 1]
    for keep in [0.0, 1.5, -2.0]:
        line, status = cli_line(binary, tmp_path, *common, "--method", "pool", "--keep", keep)
        assert status == 2
        assert expect(mc.UsageError, lambda: compressor.compress(x, method="pool", keep=keep)) == line
    # unknown method, unknown scope
    line, status = cli_line(binary, tmp_path, *common, "--method", "magic")
    assert status == 2
    assert expect(mc.UsageError, lambda: compressor.compress(x, method="magic")) == line
    line, _ = cli_line(binary, tmp_path, *common, "--method", "pool", "--scope", "world")
    assert expect(mc.UsageError, lambda: compressor.compress(x, method="pool", scope="world")) == line
    # grids past n
    line, status = cli_line(binary, tmp_path, *common, "--method", "pool", "--grid", "7x6@0")
    assert status == 2
    assert expect(mc.UsageError, lambda: compressor.compress(x, method="pool", grids=[(0, 7, 6)])) == line
    # a layout preset that does not fit n
    line, _ = cli_line(binary, tmp_path, *common, "--method", "pool", "--layout", "llava-1.5")
    assert expect(mc.UsageError, lambda: compressor.compress(x, method="pool", layout="llava-1.5")) == line
    # attention missing for visionzip and prumerge
    # (the CLI reads it from the input file, so there it is the file's fault: status 1, the
    # file named; from Python it is a missing argument, said in the API's words)
    for method in ["visionzip", "prumerge"]:
        line, status = cli_line(binary, tmp_path, *common, "--method", method)
        assert status == 1 and line.startswith(f"{features_file}: method {method} needs")
        message = expect(mc.UsageError, lambda: compressor.compress(x, method=method))
        assert message.startswith(f"method {method} needs") and "attention=" in message
    # metacompress without weights (the API's words: no --weights flag there)
    line, status = cli_line(binary, tmp_path, *common)
    assert status == 2 and "--weights" in line
    message = expect(mc.UsageError, lambda: compressor.compress(x))
    assert message.startswith("method metacompress needs P_meta weights") and "--weights" not in message
    # a corrupt weights file
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\xff" * 64)
    line, status = cli_line(binary, tmp_path, *common, "--weights", corrupt)
    assert status == 1
    assert expect(mc.Error, lambda: mc.Compressor(corrupt, backend="cpu")) == line
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(weights_for(8).read_bytes()[:-100])
    line, status = cli_line(binary, tmp_path, *common, "--weights", truncated)
    assert status == 1
    assert expect(mc.Error, lambda: mc.Compressor(truncated, backend="cpu")) == line
    missing = tmp_path / "missing.safetensors"
    line, status = cli_line(binary, tmp_path, *common, "--weights", missing)
    assert expect(mc.Error, lambda: mc.Compressor(missing, backend="cpu")) == line
    # a NaN in the features
    bad = x.copy()
    bad[5, 3] = np.nan
    save_file({"features": bad}, str(tmp_path / "nan.safetensors"))
    line, status = cli_line(binary, tmp_path, "compress", "--backend", "cpu", "--input",
                            tmp_path / "nan.safetensors", "--output", out, "--method", "pool")
    assert status == 1
    # The command line names the file first; an array has none.
    message = expect(mc.Error, lambda: compressor.compress(bad, method="pool"))
    assert line == f"{tmp_path / 'nan.safetensors'}: {message}"
    # threads, backend and precision as the command line refuses them
    line, status = cli_line(binary, tmp_path, "--threads", 0, "devices")
    assert status == 2
    assert expect(mc.UsageError, lambda: mc.Compressor(None, backend="cpu", threads=0)) == line
    line, _ = cli_line(binary, tmp_path, "compress", "--input", features_file, "--output", out,
                       "--method", "pool", "--backend", "quantum")
    assert expect(mc.UsageError, lambda: mc.Compressor(None, backend="quantum")) == line
    line, status = cli_line(binary, tmp_path, *common, "--method", "pool", "--precision", "f16")
    assert status == 2
    assert expect(mc.UsageError, lambda: mc.Compressor(None, backend="cpu", precision="f16")) == line
    still_alive()


def test_errors_of_the_python_values():
    compressor = mc.Compressor(None, backend="cpu")
    x = np.ones((36, 8), dtype=np.float32)
    cases = [
        (lambda: compressor.compress(x.astype(np.float64), method="pool"), "dtype float64"),
        (lambda: compressor.compress(x.astype(np.int32), method="pool"), "dtype int32"),
        (lambda: compressor.compress(torch.ones(36, 8, dtype=torch.float64), method="pool"), "torch.float64"),
        (lambda: compressor.compress(np.ones(36, dtype=np.float32), method="pool"), "shape [36]"),
        (lambda: compressor.compress(np.ones((1, 1, 36, 8), dtype=np.float32), method="pool"), "shape [1, 1, 36, 8]"),
        (lambda: compressor.compress(np.ones((8, 36), dtype=np.float32).T, method="pool"), "not C-contiguous"),
        (lambda: compressor.compress(np.ones((36, 16), dtype=np.float32)[:, ::2], method="pool"), "not C-contiguous"),
        (lambda: compressor.compress(torch.ones(8, 36).T, method="pool"), "not C-contiguous"),
        (lambda: compressor.compress(x.tolist(), method="pool"), "a list"),
        (lambda: compressor.compress(np.frombuffer(b"\0" + x.tobytes(), dtype=np.float32, offset=1).reshape(36, 8),
                                     method="pool"), "not aligned"),
        (lambda: compressor.compress(np.frombuffer(b"\0" + x.astype(np.float16).tobytes(), dtype=np.float16,
                                                   offset=1).reshape(36, 8), method="pool"), "not aligned"),
        (lambda: compressor.compress(x, method="pool", grids=[(0, 6)]), "not grids"),
        (lambda: compressor.compress(x, method="pool", grids=[(0, -6, 6)]), "not grids"),
        (lambda: compressor.compress(x, method="pool", grids=[(0, 6, 6)], layout="llava-1.5"), "both"),
        (lambda: compressor.compress(np.ones((35, 8), dtype=np.float32), method="pool"), "not a perfect square"),
        (lambda: compressor.compress(x, method="visionzip", attention=np.ones((2, 3, 36))), "attention has shape"),
        (lambda: mc.layout("llava-next:100"), "not a layout preset"),
        (lambda: compressor.compress(x, method="pool", seed=-1), "seed"),
        (lambda: compressor.compress(x, method="pool", keep="half"), "keep"),
        (lambda: compressor.compress(x, method=3), "method"),
        (lambda: compressor.compress(x, method="pool", grids=5), "not grids"),
        (lambda: mc.Compressor(None, backend="cpu", threads=-2), "threads"),
        (lambda: mc.Compressor(3, backend="cpu"), "weights"),
        (lambda: mc.Compressor(None, backend=None), "backend"),
        (lambda: compressor.compress(x, method="pool", layout=7), "layout"),
        (lambda: mc.layout(7), "preset"),
        (lambda: mc.layout("llava-next:672x672", pinpoints=5), "pinpoints"),
        (lambda: mc.layout("llava-next:672x672", pinpoints=[[1, 2, 3]]), "pinpoints"),
        # attention of the wrong size: a usage error from Python (issue 34)
        (lambda: compressor.compress(x, method="visionzip", attention=np.ones(35)), "attention has shape [35]"),
    ]
    for call, words in cases:
        message = expect(mc.UsageError, call)
        assert words in message, (words, message)
        assert "\n" not in message and "panicked" not in message
    # A bad tensor is what the command line reports with status 1 (a file's bad tensor).
    for call, words in [
        (lambda: compressor.compress(x, method="prumerge", attention=-np.ones(36)), "attention"),
        (lambda: compressor.compress(x, method="prumerge", attention=np.full(36, np.inf)), "attention"),
    ]:
        assert words in expect(mc.Error, call)
    for call in [
        lambda: compressor.compress(np.ones((0, 8), dtype=np.float32), method="pool"),
        lambda: compressor.compress(np.ones((36, 0), dtype=np.float32), method="pool"),
    ]:
        with pytest.raises((mc.UsageError, mc.Error)):
            call()
    still_alive()


def test_the_readmes_python_examples_run(binary, tmp_path, monkeypatch):
    """Every ```python block of the README's Python section, in a folder holding the
    pmeta.safetensors its examples load."""
    readme = (pathlib.Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    # The hf example loads a 7B model from the hub; tests/test_hf.py covers its calls.
    blocks = [block for block in blocks if "from_pretrained" not in block]
    assert len(blocks) >= 2
    run(binary, "init", "--dim", 4096, "--dc", 64, "--pos", "24x24", "--output", tmp_path / "pmeta.safetensors")
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})

"""The Python runtime under hostile use (issue 34): values changed during a call, fork, sets
named in messages, values a caller should not pass. Every answer is `UsageError` or `Error`
with one line; never a panic, a hang or another exception type."""
import multiprocessing
import os
import threading

import numpy as np
import pytest
import torch

import metacompress as mc


def test_values_toggled_during_calls_give_errors_never_a_panic():
    """Another thread toggles a value of x between NaN and finite while calls read it (the
    check's second reading may find it restored): each call returns, or raises `Error` in
    one line; a `PanicException` (a BaseException) fails the test."""
    # One check chunk (2^15 values), the toggled value its last: the second reading of the
    # chunk reaches it last, the widest window for a change.
    x = np.ones((64, 512), dtype=np.float32)
    compressor = mc.Compressor(None, backend="cpu", threads=2)
    stop = threading.Event()

    def toggle():
        while not stop.is_set():
            x[63, 511] = np.nan
            x[63, 511] = 1.0

    toggler = threading.Thread(target=toggle, daemon=True)
    toggler.start()
    outcomes = {"ok": 0, "nan": 0, "changed": 0, "other": 0}
    try:
        for _ in range(3000):
            try:
                compressor.compress(x, method="pool", keep=0.25)
                outcomes["ok"] += 1
            except mc.Error as error:
                line = str(error)
                assert "\n" not in line
                if "changed while it was being checked" in line:
                    outcomes["changed"] += 1
                elif line == "features[0, 63, 511] is NaN; expected finite values":
                    outcomes["nan"] += 1
                else:   # the NaN read by the pass itself: refused as an overflow
                    assert "overflowed" in line, line
                    outcomes["other"] += 1
    finally:
        stop.set()
        toggler.join()
    print(outcomes)


def _compress_llava_sized(queue, fresh: bool):
    try:
        compressor = mc.Compressor(None, backend="cpu") if fresh else _PARENT["compressor"]
        x = np.random.default_rng(0).standard_normal((576, 1024)).astype(np.float32)
        out = compressor.compress(x, method="pool", keep=0.25)
        queue.put(out.tokens.shape)
    except BaseException as error:   # noqa: BLE001 (reported to the parent)
        queue.put(repr(error))


_PARENT = {}


@pytest.mark.parametrize("fresh", [False, True], ids=["parents-compressor", "new-in-child"])
def test_a_forked_child_compresses_a_llava_sized_input(fresh):
    """After a call in the parent (its thread pool built), a fork()ed child (multiprocessing's
    default start method on Linux, DataLoader workers) compresses 576 x 1024 features, with
    the parent's compressor or a new one, within the timeout (was: blocked for ever)."""
    compressor = mc.Compressor(None, backend="cpu")
    x = np.random.default_rng(1).standard_normal((576, 1024)).astype(np.float32)
    compressor.compress(x, method="pool", keep=0.25)
    _PARENT["compressor"] = compressor
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_compress_llava_sized, args=(queue, fresh))
    child.start()
    child.join(timeout=120)
    if child.is_alive():
        child.kill()
        child.join()
        pytest.fail("the forked child hung in compress")
    assert child.exitcode == 0
    assert queue.get(timeout=5) == (144, 1024)
    # The parent's pool still works after the fork.
    assert compressor.compress(x, method="pool", keep=0.25).tokens.shape == (144, 1024)


def test_a_bare_fork_compresses_too():
    compressor = mc.Compressor(None, backend="cpu", threads=2)
    x = np.ones((576, 1024), dtype=np.float32)
    compressor.compress(x, method="pool", keep=0.25)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child: report and leave at once, whatever happens
        try:
            shape = compressor.compress(x, method="pool", keep=0.25).tokens.shape
            os.write(write, repr(shape).encode())
        finally:
            os._exit(0)
    os.close(write)
    import select
    ready, _, _ = select.select([read], [], [], 120)
    if not ready:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung in compress")
    answer = os.read(read, 100).decode()
    os.waitpid(pid, 0)
    assert answer == "(144, 1024)"


def usage(call) -> str:
    with pytest.raises(mc.UsageError) as raised:
        call()
    line = str(raised.value)
    assert "\n" not in line
    return line


def test_extra_sets_are_named_in_their_messages():
    compressor = mc.Compressor(None, backend="cpu")
    x = np.ones((36, 8), dtype=np.float32)
    assert "extra[0] has dtype float64" in usage(
        lambda: compressor.compress_sharing(x, [x.astype(np.float64)], method="pool"))
    bad = np.ones((36, 5), dtype=np.float32)
    bad[2, 3] = np.nan
    with pytest.raises(mc.Error) as raised:
        compressor.compress_sharing(x, [x, bad], method="pool")
    assert str(raised.value) == "extra[1][0, 2, 3] is NaN; expected finite values"
    # An f16 set whose reduced tokens pass f16's range (VisionZip's rows need not sum to 1).
    attention = np.random.default_rng(0).random(36).astype(np.float32)
    big = np.full((36, 4), 60000, np.float16)
    with pytest.raises(mc.Error) as raised:
        compressor.compress_sharing(x, [x.astype(np.float16), big], method="visionzip",
                                    keep=0.25, attention=attention)
    assert str(raised.value).startswith("extra[1] for an f16 output element")


def test_python_values_a_caller_should_not_pass_are_usage_errors():
    compressor = mc.Compressor(None, backend="cpu")
    x = torch.ones(36, 8)
    for name, value in [("sparse", x.to_sparse()), ("mkldnn", x.to_mkldnn())]:
        assert name in usage(lambda: compressor.compress(value, method="pool"))
        assert "extra[0]" in usage(lambda: compressor.compress_sharing(x, [value], method="pool"))
    nested = torch.nested.nested_tensor([x, x])
    assert "nested" in usage(lambda: compressor.compress(nested, method="pool"))
    # A negated view is read as its values.
    negated = torch._neg_view(x)
    assert torch.equal(compressor.compress(negated, method="pool").tokens,
                       -compressor.compress(x, method="pool").tokens)
    assert "meta device" in usage(lambda: compressor.compress(
        x, method="visionzip", attention=torch.ones(36, device="meta")))
    assert "extra is a NoneType" in usage(lambda: compressor.compress_sharing(x, None))
    assert "extra is a int" in usage(lambda: compressor.compress_sharing(x, 5))
    assert "pinpoints" in usage(lambda: mc.layout("llava-next:672x672", pinpoints=[[float("inf"), 336]]))
    # bools are no numbers
    assert "threads True" in usage(lambda: mc.Compressor(None, backend="cpu", threads=True))
    assert "keep True" in usage(lambda: compressor.compress(x, method="pool", keep=True))
    assert "seed False" in usage(lambda: compressor.compress(x, method="random", seed=False))
    # attention of the wrong size: a usage error here
    assert "attention has shape [35]" in usage(lambda: compressor.compress(
        x, method="visionzip", attention=np.ones(35, np.float32)))


def test_messages_cut_values_and_use_the_apis_words():
    compressor = mc.Compressor(None, backend="cpu")
    x = np.ones((36, 8), dtype=np.float32)
    huge = [(0, 6, 6, "x" * 1_000_000)]
    line = usage(lambda: compressor.compress(x, method="pool", grids=huge))
    assert len(line) < 400, len(line)
    line = usage(lambda: compressor.compress(x, method="pool", keep="0.5\n" + "9" * 1_000_000))
    assert len(line) < 400, len(line)
    line = usage(lambda: compressor.compress(x, method="pool " * 200_000))
    assert len(line) < 400, len(line)
    line = usage(lambda: compressor.compress(np.ones((35, 8), np.float32), method="pool"))
    assert "--grid" not in line and "grids=" in line
    line = usage(lambda: compressor.compress(x, method="visionzip"))
    assert "input file" not in line and "attention=" in line
    line = usage(lambda: compressor.compress(x))
    assert "--weights" not in line

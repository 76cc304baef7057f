"""One P for several token sets through the Python API (`Compressor.compress_sharing`, for
Qwen3-VL's deepstack features): each extra set's reduced tokens equal P X_k computed here in
float64 from the P the same call hands back; the main result equals a plain `compress`;
numpy and torch (bf16) sets keep their kind and dtype; bad sets are refused."""
import numpy as np
import pytest
import torch

import metacompress as mc
from conftest import run


@pytest.fixture(scope="module")
def weights(binary, tmp_path_factory):
    path = tmp_path_factory.mktemp("sharing") / "pmeta.safetensors"
    run(binary, "init", "--dim", 11, "--dc", 5, "--pos", "3x3", "--output", path)
    return path


@pytest.mark.parametrize("method", ["metacompress", "pool", "tome"])
def test_one_p_reduces_every_set(weights, seed, method):
    rng = np.random.default_rng(seed)
    b, n, d = 2, 7 * 6 + 6 + 5, 11
    grids = [(0, 7, 6, 7), (49, 1, 4)]          # a strided grid, a row, loose tokens
    x = rng.standard_normal((b, n, d)).astype(np.float32)
    levels = [rng.standard_normal((b, n, d)).astype(np.float32),
              rng.standard_normal((b, n, d + 4)).astype(np.float32)]
    compressor = mc.Compressor(str(weights), backend="cpu")
    result, reduced = compressor.compress_sharing(x, levels, grids=grids, keep=0.3,
                                                  method=method, projection=True)
    plain = compressor.compress(x, grids=grids, keep=0.3, method=method)
    np.testing.assert_array_equal(result.tokens, plain.tokens)
    p = result.projection.astype(np.float64)
    assert len(reduced) == 2
    for level, (out, values) in enumerate(zip(reduced, levels)):
        expected = p @ values.astype(np.float64)
        assert out.shape == expected.shape and out.dtype == np.float32
        error = np.linalg.norm(out - expected) / np.linalg.norm(expected)
        assert error < 1e-5, f"{method} level {level}, seed {seed}: {error}"


def test_torch_sets_come_back_as_torch_in_their_dtype(weights, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(36, 11, generator=generator, dtype=torch.float32)
    level = torch.randn(36, 8, generator=generator).to(torch.bfloat16)
    result, (out,) = mc.Compressor(str(weights), backend="cpu").compress_sharing(
        x, [level], keep=0.25, projection=True)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.bfloat16 and out.shape == (9, 8)
    expected = result.projection.double() @ level.double()
    error = ((out.double() - expected).norm() / expected.norm()).item()
    assert error < 1e-2, error


def test_bad_sets_are_refused(weights):
    compressor = mc.Compressor(str(weights), backend="cpu")
    x = np.ones((36, 11), dtype=np.float32)
    with pytest.raises(mc.UsageError, match=r"extra\[0\] holds 1 x 35 tokens; expected x's 1 x 36"):
        compressor.compress_sharing(x, [np.ones((35, 11), dtype=np.float32)])
    with pytest.raises(mc.UsageError, match="extra is one array"):
        compressor.compress_sharing(x, np.ones((36, 11), dtype=np.float32))
    with pytest.raises(mc.UsageError, match="float32 or float16"):
        compressor.compress_sharing(x, [np.ones((36, 11), dtype=np.int32)])
    bad = np.ones((36, 11), dtype=np.float32)
    bad[3, 4] = np.nan
    with pytest.raises(mc.Error, match="NaN"):
        compressor.compress_sharing(x, [bad])

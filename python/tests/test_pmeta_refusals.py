"""PMeta refuses what the runtime refuses (SPEC section 6), with a ValueError or TypeError
naming the argument, instead of returning garbage: features or weights that are not finite,
a forward pass that overflows, dtypes that are not floating point, shapes that are not
`(n, d)` / `(b, n, d)` and `d x d_c`, empty batches and widths, grid entries that are not
integers, and a keep outside (0, 1]. The checks leave gradients flowing."""
import math

import pytest
import torch
from safetensors.torch import save_file

from metacompress.torch import PMeta

GRIDS = [(0, 3, 3)]


@pytest.fixture
def pm():
    return PMeta.init(8, 4, pos=(2, 2))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_features_that_are_not_finite_are_refused_with_the_index(pm, bad):
    x = torch.randn(2, 9, 8)
    x[1, 4, 3] = bad
    with pytest.raises(ValueError, match=r"x holds .*not finite.*\(1, 4, 3\)"):
        pm(x, GRIDS, keep=0.5)


def test_an_overflowing_forward_pass_is_refused(pm):
    x = torch.randn(9, 8) * 1e20   # finite in float32; the scores are not
    with pytest.raises(ValueError, match="overflow"):
        pm(x, GRIDS, keep=0.5)


def test_weights_that_turned_non_finite_are_named(pm):
    with torch.no_grad():
        pm.w_k[2, 1] = math.nan
    with pytest.raises(ValueError, match="w_k"):
        pm(torch.randn(9, 8), GRIDS, keep=0.5)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool, torch.complex64])
def test_features_that_are_not_floating_point_are_refused(pm, dtype):
    x = torch.ones(9, 8, dtype=dtype)
    with pytest.raises(TypeError, match="x"):
        pm(x, GRIDS, keep=0.5)


def test_features_that_are_not_a_tensor_are_refused(pm):
    with pytest.raises(TypeError, match="x"):
        pm([[0.0] * 8] * 9, GRIDS, keep=0.5)


@pytest.mark.parametrize("shape", [(8,), (1, 2, 9, 8), ()])
def test_features_of_the_wrong_rank_are_refused(pm, shape):
    with pytest.raises(ValueError, match=r"x has shape .*expected \(n, d\) or \(b, n, d\)"):
        pm(torch.randn(shape), GRIDS, keep=0.5)


def test_an_empty_batch_is_refused(pm):
    with pytest.raises(ValueError, match="batch"):
        pm(torch.randn(0, 9, 8), GRIDS, keep=0.5)


def test_no_tokens_are_refused(pm):
    with pytest.raises(ValueError, match="x"):
        pm(torch.randn(0, 8), GRIDS, keep=0.5)


@pytest.mark.parametrize("entry", [2.0, 2.5, True, "2", None])
def test_grid_entries_that_are_not_integers_are_refused(pm, entry):
    with pytest.raises(TypeError, match="grid"):
        pm(torch.randn(9, 8), [(0, entry, 3)], keep=0.5)
    with pytest.raises(TypeError, match="grid"):
        pm.query_grids([(0, entry, 3)], 0.5)


def test_integer_like_grid_entries_are_taken(pm):
    import numpy as np
    y, _ = pm(torch.randn(9, 8), [(np.int64(0), torch.tensor(3), 3)], keep=0.5)
    assert y.shape == (4, 8)


@pytest.mark.parametrize("keep", [0.0, -0.1, 1.5, math.nan, math.inf])
def test_query_grids_refuses_a_keep_outside_0_1(pm, keep):
    with pytest.raises(ValueError, match="keep"):
        pm.query_grids(GRIDS, keep)


@pytest.mark.parametrize("keep", ["0.5", None, True])
def test_a_keep_that_is_not_a_number_is_refused(pm, keep):
    with pytest.raises(TypeError, match="keep"):
        pm(torch.randn(9, 8), GRIDS, keep=keep)
    with pytest.raises(TypeError, match="keep"):
        pm.query_grids(GRIDS, keep)


def test_query_grids_refuses_an_empty_grid(pm):
    with pytest.raises(ValueError, match="grid"):
        pm.query_grids([(0, 0, 3)], 0.5)


@pytest.mark.parametrize("shapes", [((8, 0), (8, 0), (0,)), ((0, 4), (0, 4), (4,))])
def test_weights_of_width_zero_are_refused(tmp_path, shapes):
    tensors = {name: torch.zeros(shape) for name, shape in zip(("w_q", "w_k", "omega"), shapes)}
    with pytest.raises(ValueError, match="w_q"):
        PMeta(tensors["w_q"], tensors["w_k"], tensors["omega"])
    path = tmp_path / "w.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(ValueError, match="w_q"):
        PMeta.load(path)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.uint8, torch.bool, torch.float64])
def test_weights_of_another_dtype_do_not_load(tmp_path, dtype):
    good = PMeta.init(8, 4)
    tensors = {"w_q": good.w_q.detach().to(dtype), "w_k": good.w_k.detach().float(),
               "omega": good.omega.detach().float()}
    path = tmp_path / "w.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(TypeError, match=r"w_q.*F32, F16 or BF16"):
        PMeta.load(path)


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool, torch.complex64])
def test_the_constructor_refuses_weights_that_are_not_floating_point(dtype):
    with pytest.raises(TypeError, match="omega"):
        PMeta(torch.zeros(8, 4), torch.zeros(8, 4), torch.ones(4, dtype=dtype))


def test_the_constructor_refuses_weights_of_the_wrong_rank():
    with pytest.raises(ValueError, match="w_q"):
        PMeta(torch.zeros(8), torch.zeros(8, 4), torch.ones(4))
    with pytest.raises(TypeError, match="w_k"):
        PMeta(torch.zeros(8, 4), [[0.0] * 4] * 8, torch.ones(4))
    with pytest.raises(ValueError, match="pos_embed"):
        PMeta(torch.zeros(8, 4), torch.zeros(8, 4), torch.ones(4), torch.zeros(0, 2, 8))


def test_the_constructor_refuses_weights_that_are_not_finite():
    w = torch.randn(8, 4)
    w[3, 2] = math.inf
    with pytest.raises(ValueError, match=r"w_q .*not finite.*\(3, 2\)"):
        PMeta(w, torch.randn(8, 4), torch.ones(4))


def test_a_file_with_a_non_finite_weight_is_refused_with_the_index(tmp_path):
    good = PMeta.init(8, 4, pos=(2, 2))
    table = good.pos_embed.detach().clone()
    table[1, 0, 5] = math.nan
    path = tmp_path / "w.safetensors"
    save_file({"w_q": good.w_q.detach(), "w_k": good.w_k.detach(), "omega": good.omega.detach(),
               "pos_embed": table}, str(path))
    with pytest.raises(ValueError, match=r"pos_embed .*not finite.*\(1, 0, 5\)"):
        PMeta.load(path)


def test_the_checks_keep_gradients_flowing(pm):
    x = torch.randn(2, 9, 8, requires_grad=True)
    y, p = pm(x, GRIDS, keep=0.5)
    (y.square().sum() + p.square().sum()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert pm.w_q.grad is not None and torch.isfinite(pm.w_q.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_every_floating_dtype_still_runs(pm, dtype):
    y, p = pm(torch.randn(9, 8).to(dtype), GRIDS, keep=0.5)
    assert y.dtype == dtype and y.shape == (4, 8) and torch.isfinite(p).all()

"""PMeta against the Rust runtime's float64 reference: the binary run on the same weights and
features agrees within SPEC's 1e-4 on fresh random shapes (odd grids, several grids with loose
tokens, strided grids, both scopes, resized tables, batches, a keep that lands on a .5
rounding case); a Rust `init` file loads and gives the Rust outputs; float64 gradcheck."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import run
from metacompress.layouts import query_shape
from metacompress.torch import PMeta, collapse_loss, entropy_loss, sine_cosine_table


def random_pmeta(generator, d, c, table):
    scale = d ** -0.5
    w_q = torch.randn(d, c, generator=generator) * scale
    w_k = torch.randn(d, c, generator=generator) * scale
    omega = 0.5 + torch.rand(c, generator=generator)
    pos = None if table is None else torch.randn(*table, d, generator=generator)
    return PMeta(w_q, w_k, omega, pos)


def rust_compress(binary, tmp_path, weights_path, x, grids, keep, scope):
    features = tmp_path / "features.safetensors"
    save_file({"features": x.float().contiguous()}, str(features),
              metadata={"grids": json.dumps([list(g) for g in grids])})
    output = tmp_path / "out.safetensors"
    run(binary, "compress", "--weights", weights_path, "--input", features, "--output", output,
        "--backend", "reference", "--keep", repr(keep), "--scope", scope, "--save-projection")
    tensors = load_file(str(output))
    return tensors["tokens"].double(), tensors["projection"].double()


def relative(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm())


def layouts(generator):
    """(n, grids) cases: one odd grid; two grids with loose tokens; interleaved strided grids
    with a newline-strided one."""
    r = lambda lo, hi: int(torch.randint(lo, hi, (1,), generator=generator))
    h, w = 2 * r(1, 5) + 1, 2 * r(1, 5) + 1
    yield h * w, [(0, h, w)]
    a = (2, 2 * r(1, 4) + 1, 2 * r(1, 4) + 1)
    b_off = a[0] + a[1] * a[2] + 3
    b = (b_off, 2 * r(1, 4) + 1, r(3, 9))
    yield b[0] + b[1] * b[2] + 2, [a, b]
    wa, wb = 2 * r(1, 3) + 1, 2 * r(1, 3) + 1
    stride = wa + wb + 2
    ha, hb = r(2, 6), r(2, 6)
    ga, gb = (1, ha, wa, stride), (1 + wa + 1, hb, wb, stride)
    end = max(1 + (ha - 1) * stride + wa, 2 + wa + (hb - 1) * stride + wb)
    wc = r(3, 7)
    gc = (end + 1, r(2, 5), wc, wc + 1)
    yield gc[0] + (gc[1] - 1) * gc[3] + wc + 1, [ga, gb, gc]


@pytest.mark.parametrize("scope", ["image", "grid"])
def test_pmeta_matches_the_rust_reference(binary, tmp_path, seed, scope):
    generator = torch.Generator().manual_seed(seed)
    for n, grids in layouts(generator):
        for table in [None, (3, 4), (grids[0][1], grids[0][2])]:
            d, c, batch = 2 * int(torch.randint(5, 20, (1,), generator=generator)) + 1, 7, 2
            pm = random_pmeta(generator, d, c, table)
            weights = tmp_path / "weights.safetensors"
            pm.save(weights)
            keep = float(torch.empty(1).uniform_(0.1, 0.7, generator=generator))
            x = torch.randn(batch, n, d, generator=generator)
            y, p = PMeta.load(weights).double()(x.double(), grids, keep=keep, scope=scope)
            tokens, projection = rust_compress(binary, tmp_path, weights, x, grids, keep, scope)
            what = f"seed {seed}: n {n} grids {grids} table {table} keep {keep} {scope}"
            assert relative(y, tokens) <= 1e-4, what
            assert relative(p, projection) <= 1e-4, what


def test_a_half_rounding_keep_matches_the_rust_query_grid(binary, tmp_path, seed):
    # 2 * sqrt(0.5625) = 1.5 -> 2 (half away from zero); 10 * 0.25 = 2.5 -> 3 on a 1-row grid.
    assert query_shape(2, 2, 0.5625) == (2, 2)
    assert query_shape(1, 10, 0.25) == (1, 3)
    generator = torch.Generator().manual_seed(seed)
    pm = random_pmeta(generator, 9, 3, (2, 2))
    weights = tmp_path / "weights.safetensors"
    pm.save(weights)
    for grids, n, keep in [([(0, 2, 2)], 4, 0.5625), ([(0, 1, 10)], 11, 0.25)]:
        x = torch.randn(n, 9, generator=generator)
        y, p = pm.double()(x.double(), grids, keep=keep)
        tokens, projection = rust_compress(binary, tmp_path, weights, x, grids, keep, "image")
        assert y.shape == tokens.shape, f"seed {seed}: {grids} at keep {keep}"
        assert relative(y, tokens) <= 1e-4


def test_a_rust_init_file_loads_and_gives_the_rust_outputs(binary, tmp_path, seed):
    weights = tmp_path / "init.safetensors"
    run(binary, "init", "--dim", 19, "--dc", 7, "--pos", "5x4", "--pos-scale", 0.5, "--seed", 3,
        "--output", weights)
    pm = PMeta.load(weights)
    assert torch.allclose(pm.w_q, pm.w_k) and torch.equal(pm.omega, torch.ones(7))
    # The table is the same recipe as PMeta.init's.
    assert torch.allclose(pm.pos_embed, sine_cosine_table(5, 4, 19, 0.5), atol=1e-6)
    ours = PMeta.init(19, 7, pos=(5, 4), seed=3, pos_scale=0.5)
    assert torch.allclose(ours.pos_embed, pm.pos_embed, atol=1e-6)
    gram = ours.w_q.double().T @ ours.w_q.double()
    assert torch.allclose(gram, torch.eye(7, dtype=torch.float64), atol=1e-5)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 35, 19, generator=generator)
    grids = [(0, 4, 5), (21, 3, 4, 5)]
    y, p = pm.double()(x.double(), grids, keep=0.3, scope="grid")
    tokens, projection = rust_compress(binary, tmp_path, weights, x, grids, 0.3, "grid")
    assert relative(y, tokens) <= 1e-4 and relative(p, projection) <= 1e-4, f"seed {seed}"


def test_saved_weights_round_trip_in_every_dtype(tmp_path, seed):
    generator = torch.Generator().manual_seed(seed)
    pm = random_pmeta(generator, 11, 4, (2, 3))
    pm.save(tmp_path / "w.safetensors")
    again = PMeta.load(tmp_path / "w.safetensors")
    for name in ("w_q", "w_k", "omega", "pos_embed"):
        assert torch.equal(getattr(pm, name), getattr(again, name))
    tensors = load_file(str(tmp_path / "w.safetensors"))
    for dtype in (torch.float16, torch.bfloat16):
        save_file({k: v.to(dtype) for k, v in tensors.items()}, str(tmp_path / "h.safetensors"))
        half = PMeta.load(tmp_path / "h.safetensors")
        assert torch.allclose(half.w_q, pm.w_q, rtol=1e-2, atol=1e-2)


def test_gradcheck_in_float64(seed):
    generator = torch.Generator().manual_seed(seed)
    pm = random_pmeta(generator, 5, 3, (2, 2)).double()
    x = torch.randn(2, 13, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    # Two grids with interleaved rows (stride 4) and loose tokens, both scopes' machinery.
    def g(x, w_q, w_k, omega, pos):
        module = PMeta.__new__(PMeta)
        torch.nn.Module.__init__(module)
        module.w_q, module.w_k, module.omega, module.pos_embed = w_q, w_k, omega, pos
        y, p = PMeta.forward(module, x, [(0, 2, 3, 4), (3, 2, 1, 4)], keep=0.5, scope="grid")
        return y, entropy_loss(p), collapse_loss(p)

    inputs = [x] + [t.detach().clone().requires_grad_(True) for t in (pm.w_q, pm.w_k, pm.omega, pm.pos_embed)]
    assert torch.autograd.gradcheck(g, inputs, eps=1e-6, atol=1e-5), f"seed {seed}"


def test_bad_inputs_are_refused_with_a_message():
    pm = PMeta.init(8, 4, pos=(2, 2))
    x = torch.randn(10, 8)
    for grids, keep, scope, says in [
        ([(0, 3, 4)], 0.5, "image", "ends past"),
        ([(0, 2, 3, 2)], 0.5, "image", "stride"),
        ([(0, 2, 2), (1, 2, 2)], 0.5, "image", "overlap"),
        ([(0, 2, 2)], 0.0, "image", "keep"),
        ([(0, 2, 2)], 0.5, "rows", "scope"),
    ]:
        with pytest.raises(ValueError, match=says):
            pm(x, grids, keep=keep, scope=scope)
    with pytest.raises(ValueError, match="width"):
        pm(torch.randn(10, 9), [(0, 2, 2)])

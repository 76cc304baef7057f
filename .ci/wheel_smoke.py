"""Run by .ci/wheel.sh in a fresh virtual environment holding the wheel and numpy only, as a
user who wants the runtime on numpy arrays installs it (`pip install metacompress`): the
runtime works, importing it loads no torch, and every room that needs an extra says which
in one line. Usage: python wheel_smoke.py VERSION"""
import subprocess
import sys

import numpy as np

import metacompress as mc

version = sys.argv[1]
assert mc.__version__ == version, (mc.__version__, version)
assert "torch" not in sys.modules, "importing metacompress imported torch"
for heavy in ("torch", "transformers", "safetensors", "PIL"):
    try:
        __import__(heavy)
    except ImportError:
        pass
    else:
        raise SystemExit(f"{heavy} is installed: this is not a numpy-only environment")

# The runtime: a layout, two methods, the devices, the error classes.
n, grids = mc.layout("llava-next:672x672")
assert n == 2928 and len(grids) == 2, (n, grids)
x = np.random.default_rng(0).standard_normal((n, 32), dtype=np.float32)
compressor = mc.Compressor(None, backend="cpu")
for method in ("pool", "divprune"):
    result = compressor.compress(x, grids=grids, keep=0.1, method=method, projection=True)
    m = result.tokens.shape[0]
    assert result.tokens.shape == (m, 32) and result.projection.shape == (m, n), method
    assert np.allclose(result.projection @ x, result.tokens, atol=1e-4), method
assert isinstance(mc.devices(), list)
assert issubclass(mc.UsageError, ValueError) and issubclass(mc.Error, RuntimeError)
try:
    compressor.compress(x, grids=grids, keep=2.0, method="pool")
except mc.UsageError as error:
    assert "keep" in str(error) and "\n" not in str(error), error
else:
    raise SystemExit("keep 2.0 was accepted")
bad = x.copy()
bad[5, 3] = np.nan
try:
    compressor.compress(bad, grids=grids, keep=0.1, method="pool")
except mc.Error as error:
    assert "NaN" in str(error), error
else:
    raise SystemExit("a NaN was accepted")

# Rooms that need an extra: one line naming it, as an import and as a command.
for module, extra in (("metacompress.hf", "hf"), ("metacompress.torch", "torch"),
                      ("metacompress.training", "train"), ("metacompress.evaluation", "eval")):
    try:
        __import__(module)
    except ImportError as error:
        message = str(error)
        assert f'"metacompress[{extra}]"' in message and "\n" not in message, message
    else:
        raise SystemExit(f"{module} imported without its extra")
for command, extra in (("metacompress.train", "train"), ("metacompress.evaluate", "eval")):
    run = subprocess.run([sys.executable, "-m", command, "--help"], capture_output=True, text=True)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 1 and len(lines) == 1, (command, run.returncode, run.stderr)
    assert lines[0].startswith("error: ") and f'"metacompress[{extra}]"' in lines[0], lines
print(f"wheel smoke test passed: metacompress {mc.__version__}, numpy {np.__version__}, "
      f"{compressor.device}")

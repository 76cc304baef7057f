"""metacompress from Python: the native runtime, and the trainer of P_meta.

- `metacompress.Compressor`, `metacompress.layout`, `metacompress.devices`: the Rust runtime
  (SPEC section 8), every reduction method; errors raise `metacompress.UsageError` (a
  ValueError) or `metacompress.Error` (a RuntimeError) with the command line's message.

- `metacompress.torch.PMeta`: SPEC section 4 in differentiable PyTorch.
- `metacompress.layouts`: the SPEC grids of LLaVA-1.5, LLaVA-NeXT and Qwen2-VL.
- `metacompress.adapters.Adapter`: a frozen model's visual tokens in, logits out.
- `python -m metacompress.train`: distillation training; `python -m metacompress.dialogues`:
  GQA/VQA-v2 questions into multi-turn dialogues; `python -m metacompress.export_features`:
  a model's visual tokens as the runtime's input file.
"""
__version__ = "0.1.0"

# The native runtime (Rust, built into the package by maturin): every reduction method.
from .runtime import Compressor, Error, Result, UsageError, devices, layout  # noqa: E402

__all__ = ["Compressor", "Error", "Result", "UsageError", "devices", "layout"]

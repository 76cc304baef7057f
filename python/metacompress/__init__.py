"""metacompress from Python: the native runtime, and the trainer and evaluation of P_meta.

The package's rooms, bottom up (each imports only from below; `python/.importlinter` holds
that, checked in CI):

- the runtime door, here at the top level (numpy only): `metacompress.Compressor`,
  `metacompress.layout`, `metacompress.devices`, `metacompress.method_scope` (the Rust
  runtime, SPEC section 8, every reduction method; errors raise `metacompress.UsageError`, a
  ValueError, or `metacompress.Error`, a RuntimeError, with the command line's message),
  `layouts` (the SPEC grids of real models), `files` (atomic writing), `memory`.
- `metacompress.torch`: the PyTorch twin, SPEC section 4 in differentiable PyTorch (`PMeta`).
- `metacompress.tasks`: images and questions (the toy task `shapes`, synthetic images,
  LLaVA-format conversation files): data, no model.
- `metacompress.models`: Hugging Face models: `adapters` (a frozen model's visual tokens in,
  logits out), `reduced` (generation with reduced tokens; `metacompress.hf`), `inputs` (a
  conversation as a model's inputs), `tiny` (tiny random-weight models of six families).
- `metacompress.toy`: the small models trained here on the toy task, shipped.
- `metacompress.training`: the trainer of P_meta (`python -m metacompress.train`), its loss,
  samples, multi-turn dialogues (`python -m metacompress.dialogues`) and feature export
  (`python -m metacompress.export_features`).
- `metacompress.evaluation`: does the model still answer (`python -m metacompress.evaluate`).
"""
# The native runtime (Rust, built into the package by maturin): every reduction method.
from .runtime import Compressor, Error, Result, UsageError, devices, layout, method_scope
from ._native import __version__  # the crate's version (Cargo.toml): one version everywhere

__all__ = ["Compressor", "Error", "Result", "UsageError", "__version__", "devices", "layout",
           "method_scope"]

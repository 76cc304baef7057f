"""metacompress (Python side): learn P_meta by the paper's distillation on Hugging Face
vision-language models, and write weights the Rust runtime loads.

- `metacompress.torch.PMeta`: SPEC section 4 in differentiable PyTorch.
- `metacompress.layouts`: the SPEC grids of LLaVA-1.5, LLaVA-NeXT and Qwen2-VL.
- `metacompress.adapters.Adapter`: a frozen model's visual tokens in, logits out.
- `python -m metacompress.train`: distillation training; `python -m metacompress.dialogues`:
  GQA/VQA-v2 questions into multi-turn dialogues; `python -m metacompress.export_features`:
  a model's visual tokens as the runtime's input file.
"""
__version__ = "0.1.0"

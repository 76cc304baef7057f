"""Hugging Face vision-language models around the runtime: `adapters` (where six families
make their visual tokens, their SPEC layouts, logits from given tokens), `inputs` (a
conversation and an image as a model's inputs), `reduced` (generation with reduced tokens,
`metacompress.hf`), `tiny` (tiny random-weight models of the six families). Needs the `hf`
extra (torch, transformers, pillow)."""
from ..extras import require

require("metacompress.models", "hf")

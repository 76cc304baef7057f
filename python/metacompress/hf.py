"""`metacompress.hf`: generation with reduced visual tokens (`ReducedModel`); it lives in
`metacompress.models.reduced`, whose docstring says how to use it."""
from .models.reduced import ATTENTION, Generated, Images, ReducedModel

__all__ = ["ATTENTION", "Generated", "Images", "ReducedModel"]

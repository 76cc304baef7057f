"""Does the model still answer with reduced tokens? `harness` (`python -m
metacompress.evaluate`, SPEC section 10)."""
from ..extras import require

require("metacompress.evaluation", "eval")

"""Training P_meta by the paper's distillation: `trainer` (`python -m metacompress.train`),
`distill` (the loss), `data` (samples from conversation files, toy tasks, synthetic ones),
`dialogues` (`python -m metacompress.dialogues`) and `features`
(`python -m metacompress.export_features`)."""
from ..extras import require

require("metacompress.training", "train")

"""The paper's distillation loss: `L = L_pred + alpha_entropy * L_entropy + alpha_collapse *
L_collapse`.

- `L_pred`: KL(teacher || student) over the answer tokens of every turn, teacher-forced (one
  pass each, which equals reusing the cache turn by turn). The teacher is the frozen model fed
  all visual tokens; the student the same model fed `Y = P X`.
- `L_entropy`: the mean over rows of `P` of the row entropy.
- `L_collapse`: the largest column sum of `P`, per image, averaged over the batch.

Qwen3-VL's deepstack levels are reduced with the student's `P` too: `Y_k = P X_k`.

Every term is computed per sample (the KL as the mean over its answer tokens) and averaged
over the batch, so a padded batch gives the mean of its samples' losses.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..models.adapters import Adapter, shorten
from ..models.inputs import Batch, pad
from ..torch import PMeta, apply_projection, collapse_loss, entropy_loss


@dataclass
class Weights:
    """The loss's weights and what P_meta is asked for."""
    keep: float = 0.1
    scope: str = "image"
    alpha_entropy: float = 1.0
    alpha_collapse: float = 1.0


def predicting(answer: torch.Tensor) -> torch.Tensor:
    """Positions whose logits predict an answer token (the token before each)."""
    return torch.cat([answer[1:], answer.new_zeros(1)])


def answer_kl(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """Mean over rows of KL(softmax(teacher) || softmax(student)), in float32."""
    t = F.log_softmax(teacher.float(), dim=-1)
    s = F.log_softmax(student.float(), dim=-1)
    return (t.exp() * (t - s)).sum(-1).mean()


def losses(adapter: Adapter, pmeta: PMeta, batch: Batch, weights: Weights, teacher=None,
           features=None) -> dict[str, torch.Tensor]:
    """`total`, `pred`, `entropy` and `collapse` for a batch (`teacher`: its teacher logits,
    `features`: its visual tokens, when already computed)."""
    if features is None:
        features = adapter.features(batch.pixels)
    if teacher is None:
        with torch.no_grad():
            teacher = adapter.logits(batch.input_ids, batch.attention_mask, features,
                                     batch.pixels.image_grid_thw)
    levels = getattr(features, "levels", [])
    reduced, projections, ids, answers, thw = [], [], [], [], []
    reduced_levels = [[] for _ in levels]
    for index, tokens in enumerate(features):
        n, grids = adapter.layout(batch.pixels, index)
        if tokens.shape[0] != n:
            raise ValueError(f"image {index}: the model made {tokens.shape[0]} visual tokens; "
                             f"its layout describes {n}")
        y, p = pmeta(tokens.float(), [tuple(g) for g in grids], keep=weights.keep, scope=weights.scope)
        reduced.append(y)
        for level, out in zip(levels, reduced_levels):   # Qwen3-VL's deepstack: Y_k = P X_k
            out.append(apply_projection(p, level[index].float()))
        projections.append(p)
        length = int(batch.attention_mask[index].sum())
        short_ids, short_answer = shorten(batch.input_ids[index, :length], batch.answer[index, :length],
                                          adapter.image_token_id, y.shape[0])
        ids.append(short_ids)
        answers.append(short_answer)
        thw.append(adapter.reduced_grid_thw(grids, weights.keep))
    student_ids = pad(ids, 0)
    student_mask = pad([torch.ones_like(i) for i in ids], 0)
    grid_thw = None if thw[0] is None else torch.tensor(thw, device=student_ids.device)
    student = adapter.logits(student_ids, student_mask, reduced, grid_thw, levels=reduced_levels)
    pred = []
    for index in range(len(features)):
        length = int(batch.attention_mask[index].sum())
        t_rows = predicting(batch.answer[index, :length])
        s_rows = predicting(answers[index])
        pred.append(answer_kl(teacher[index, :length][t_rows], student[index, :len(ids[index])][s_rows]))
    pred = torch.stack(pred).mean()
    entropy = torch.stack([entropy_loss(p) for p in projections]).mean()
    collapse = torch.stack([collapse_loss(p) for p in projections]).mean()
    total = pred + weights.alpha_entropy * entropy + weights.alpha_collapse * collapse
    return {"total": total, "pred": pred, "entropy": entropy, "collapse": collapse}

"""Prediction-level (logit) losses with temperature: soft KL, soft cross-entropy and logit MSE.

All functions take student and teacher logits of shape ``(..., K)`` (``(B, C)`` for a task head,
``(B, N, V)`` for an LM head) and an optional mask over the leading dimensions. Teacher
distributions are the first argument of KL, as in Hinton et al. (2015). Math runs in float32 so a
bf16/fp16 teacher never degrades the loss.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from lightning_kd.losses.masking import Reduction, reduce_masked, reduce_masked_per_sample


def _kept_rows(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """The rows a row mask keeps, so per-row math skips the rest.

    MLM distillation scores ~15 % of positions; softmaxes over the other 85 % of ``(B, N, V)``
    rows would be thrown away by the mask anyway (and a NaN there would survive ``0 × NaN``).
    Without a mask of the logits' leading shape, every row is kept as is.
    """
    if mask is None or mask.shape != student_logits.shape[:-1]:
        return student_logits, teacher_logits, None
    keep = mask.bool()
    return student_logits[keep], teacher_logits[keep], keep


def _spread(rows: Tensor, keep: Tensor | None) -> Tensor:
    """Per-row values of the kept rows back at their positions (0 elsewhere), for the reduction."""
    return rows if keep is None else rows.new_zeros(keep.shape).masked_scatter(keep, rows)


def _reduce(rows: Tensor, mask: Tensor | None, reduction: Reduction, per_sample: bool) -> Tensor:
    if per_sample:
        return reduce_masked_per_sample(rows, mask, reduction)
    return reduce_masked(rows, mask, reduction)


def soft_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    reduction: Reduction = "masked_mean",
    t2_scale: bool = True,
    per_sample: bool = False,
) -> Tensor:
    """``T² · mean_rows KL(softmax(z_t/T) ‖ softmax(z_s/T))``.

    The ``T²`` factor (``t2_scale``) keeps the soft gradient's magnitude independent of ``T``.
    """
    student_logits, teacher_logits, keep = _kept_rows(student_logits, teacher_logits, mask)
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    rows = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1)
    loss = _reduce(_spread(rows, keep), mask, reduction, per_sample)
    return loss * temperature**2 if t2_scale else loss


def soft_cross_entropy(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    reduction: Reduction = "masked_mean",
    t2_scale: bool = False,
    per_sample: bool = False,
) -> Tensor:
    """``mean_rows −Σ_k softmax(z_t/T)_k · log softmax(z_s/T)_k`` (summed over classes, not averaged).

    Differs from :func:`soft_kl` by the teacher's entropy, a constant without gradient. The GKD
    reference's fine-tuning default is this loss without ``T²``.
    """
    student_logits, teacher_logits, keep = _kept_rows(student_logits, teacher_logits, mask)
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    p_t = F.softmax(teacher_logits.float() / temperature, dim=-1)
    rows = -(p_t * log_p_s).sum(dim=-1)
    loss = _reduce(_spread(rows, keep), mask, reduction, per_sample)
    return loss * temperature**2 if t2_scale else loss


def logits_mse(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor | None = None,
    reduction: Reduction = "masked_mean",
    teacher_scale: float = 1.0,
    per_sample: bool = False,
) -> Tensor:
    """Mean squared error between raw logits (no temperature), averaged over the class dimension too.

    ``teacher_scale`` multiplies the teacher's logits (the reference's ``mse_t_w``).
    """
    student_logits, teacher_logits, keep = _kept_rows(student_logits, teacher_logits, mask)
    rows = (student_logits.float() - teacher_scale * teacher_logits.float()).pow(2).mean(dim=-1)
    return _reduce(_spread(rows, keep), mask, reduction, per_sample)

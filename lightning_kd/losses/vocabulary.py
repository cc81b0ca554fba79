"""Word-prediction distillation over full-vocabulary logits (GLMD; Tan et al. 2023).

Every function takes student and teacher vocabulary logits of shape ``(B, N, V)`` (one row per
token position; any leading shape works) and an optional position mask ``(B, N)``. The optional
top-n truncation follows the GKD reference's ``logitsdistil_top_n``:

* ``"teacher_min"`` — the teacher's logits below its n-th largest are lowered to its minimum; the
  student is untouched and the loss still runs over the whole vocabulary;
* ``"restrict"`` — both models are cut to the teacher's top-n columns, and a hinge
  (:func:`top_n_hinge`) pushes every other student logit below the student's smallest top-n logit.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from lightning_kd.losses.logits import logits_mse, soft_kl
from lightning_kd.losses.masking import Reduction

VocabularyLoss = Literal["kl", "mse"]
TopNMode = Literal["restrict", "teacher_min"]


def top_n_count(top_n: float, width: int) -> int:
    """The number of columns ``n`` kept out of ``width``: ``top_n`` itself when ``>= 1``, a fraction of
    ``width`` (rounded down, at least 1) when in ``(0, 1)``.

    Raises:
        ValueError: ``top_n <= 0`` or ``n >= width`` (nothing would be cut).
    """
    if top_n <= 0:
        raise ValueError(f"top_n must be a count >= 1 or a fraction in (0, 1), got {top_n}.")
    n = int(top_n) if top_n >= 1 else max(1, int(top_n * width))
    if n >= width:
        raise ValueError(f"top_n={top_n} keeps {n} of {width} vocabulary columns; it must keep fewer than all of them.")
    return n


def teacher_min_tail(teacher_logits: Tensor, n: int) -> Tensor:
    """``t' = t`` where ``t >= τ`` (the n-th largest logit of its row), else the row's minimum logit.

    Ties with ``τ`` are kept, so a row may keep more than ``n`` values.
    """
    threshold = teacher_logits.topk(n, dim=-1).values[..., -1:]
    floor = teacher_logits.amin(dim=-1, keepdim=True)
    return torch.where(teacher_logits >= threshold, teacher_logits, floor)


def top_n_hinge(student_logits: Tensor, top_indices: Tensor, mask: Tensor | None = None) -> Tensor:
    """``Σ_{rows, v∉N} relu(s_v − min_{k∈N} s_k) / #{non-zero terms}`` on raw student logits.

    ``N`` (``top_indices``, shape ``(..., n)``) is each row's teacher top-n. Rows off ``mask`` add
    nothing. The reference divides by the count of non-zero terms even when it is 0 (NaN); here the
    term is then 0.
    """
    floor = student_logits.gather(-1, top_indices).amin(dim=-1, keepdim=True)
    violation = (student_logits - floor).relu().scatter(-1, top_indices, 0.0)
    if mask is not None:
        violation = violation * mask.to(violation.dtype).unsqueeze(-1)
    count = (violation > 0).sum().clamp_min(1)
    return violation.sum() / count


def word_prediction_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 1.0,
    loss: VocabularyLoss = "kl",
    top_n: float | None = None,
    top_n_mode: TopNMode = "restrict",
    mask: Tensor | None = None,
    reduction: Reduction = "masked_mean",
    positions: Tensor | None = None,
) -> dict[str, Tensor]:
    """GLMD's word-prediction loss between vocabulary logits.

    Args:
        student_logits: ``(B, N, V)``.
        teacher_logits: ``(B, N, V)``, same columns in the same order.
        temperature: ``T`` of the ``kl`` loss (``T²·KL_T``); ``mse`` uses raw logits.
        loss: ``"kl"`` (``T²·KL(softmax(t/T) ‖ softmax(s/T))`` per row) or ``"mse"`` (mean over columns).
        top_n: optional truncation to the teacher's top ``n`` columns (see :func:`top_n_count`).
        top_n_mode: ``"restrict"`` or ``"teacher_min"`` (module docstring).
        mask: ``(B, N)`` rows that count (``None``: all).
        reduction: ``"masked_mean"`` (divide by the kept rows) or ``"gkd"`` (by all rows).
        positions: for compact token rows ``(R, V)`` (then ``mask`` is ``None``), their ``(B, N)``
            places: the value equals the whole logits' with ``positions`` as the mask.

    Returns:
        ``{"vocabulary": …}``, plus ``"hinge"`` (:func:`top_n_hinge`) with ``top_n_mode="restrict"``.
    """
    terms = {}
    if top_n is not None:
        n = top_n_count(top_n, teacher_logits.shape[-1])
        if top_n_mode == "teacher_min":
            teacher_logits = teacher_min_tail(teacher_logits.float(), n)
        elif top_n_mode == "restrict":
            top = teacher_logits.topk(n, dim=-1).indices
            terms["hinge"] = top_n_hinge(student_logits.float(), top, mask)
            student_logits, teacher_logits = student_logits.gather(-1, top), teacher_logits.gather(-1, top)
        else:
            raise ValueError(f"Unknown top_n_mode {top_n_mode!r}; use 'restrict' or 'teacher_min'.")
    if loss == "mse":
        value = logits_mse(student_logits, teacher_logits, mask, reduction, positions=positions)
    elif loss == "kl":
        value = soft_kl(student_logits, teacher_logits, temperature, mask, reduction, t2_scale=True, positions=positions)
    else:
        raise ValueError(f"Unknown vocabulary loss {loss!r}; use 'kl' or 'mse'.")
    return {"vocabulary": value, **terms}

"""Hidden-state losses: MSE, cosine distance and PKD's normalised distance.

Inputs are ``(B, N, d)`` hidden states (or ``(B, d)`` pooled vectors); ``mask`` covers the leading
dimensions (``(B, N)`` token mask). Reductions follow :mod:`lightning_kd.losses.masking`.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from lightning_kd.losses.masking import Reduction, reduce_masked, reduce_masked_per_sample


def _reduce(rows: Tensor, mask: Tensor | None, reduction: Reduction, per_sample: bool) -> Tensor:
    return reduce_masked_per_sample(rows, mask, reduction) if per_sample else reduce_masked(rows, mask, reduction)


def hidden_mse(
    student: Tensor, teacher: Tensor, mask: Tensor | None = None, reduction: Reduction = "masked_mean", per_sample: bool = False
) -> Tensor:
    """Mean over kept rows of the mean squared difference over the feature dimension.

    Without a mask this equals ``F.mse_loss(student, teacher)`` (mean over every element).
    """
    rows = (student.float() - teacher.float()).pow(2).mean(dim=-1)
    return _reduce(rows, mask, reduction, per_sample)


def cosine_distance(
    student: Tensor, teacher: Tensor, mask: Tensor | None = None, reduction: Reduction = "masked_mean", per_sample: bool = False
) -> Tensor:
    """Mean over kept rows of ``1 − cos(student_row, teacher_row)``."""
    rows = 1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=-1, eps=1e-8)
    return _reduce(rows, mask, reduction, per_sample)


def normalized_mse(
    student: Tensor, teacher: Tensor, mask: Tensor | None = None, reduction: Reduction = "masked_mean", per_sample: bool = False
) -> Tensor:
    """PKD's patience loss: squared distance between L2-normalised vectors, summed over features.

    ``‖s/‖s‖ − t/‖t‖‖²`` per row, then the masked mean over rows.
    """
    rows = (F.normalize(student.float(), dim=-1) - F.normalize(teacher.float(), dim=-1)).pow(2).sum(dim=-1)
    return _reduce(rows, mask, reduction, per_sample)

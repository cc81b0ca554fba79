"""PKD's patience distance between one student and one teacher hidden state (Sun et al. 2019).

Inputs are ``(B, d)`` pooled vectors (:mod:`lightning_kd.core.pooling`) or ``(B, N, d)`` token states
with an optional ``(B, N)`` mask. The distance is the squared Euclidean distance between (optionally L2-normalised)
vectors, summed over the features (the paper's ``‖s/‖s‖ − t/‖t‖‖²``) or averaged over them (the GKD
reference's element-wise MSE, which is the sum divided by ``d``). Rows are then reduced with
:mod:`lightning_kd.losses.masking`.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from lightning_kd.losses.hidden import hidden_mse, normalized_mse
from lightning_kd.losses.masking import Reduction

FeatureReduction = Literal["sum", "mean"]


def patience_distance(
    student: Tensor,
    teacher: Tensor,
    mask: Tensor | None = None,
    normalize: bool = True,
    feature_reduction: FeatureReduction = "sum",
    reduction: Reduction = "masked_mean",
    per_sample: bool = False,
) -> Tensor:
    """Mean over kept rows of ``‖n(s) − n(t)‖²`` (``feature_reduction="sum"``) or of its mean over features.

    Args:
        student: ``(B, d)`` or ``(B, N, d)`` student states.
        teacher: same shape as ``student`` (project first when widths differ).
        mask: ``None`` or a ``(B, N)`` mask of the rows to keep.
        normalize: L2-normalise each vector first (``n``); otherwise ``n`` is the identity.
        feature_reduction: ``"sum"`` over the ``d`` features or ``"mean"`` over them.
        reduction: masked reduction of the rows (see :mod:`lightning_kd.losses.masking`).
        per_sample: return ``(B,)`` per-example values instead of a scalar.
    """
    if feature_reduction not in ("sum", "mean"):
        raise ValueError(f"feature_reduction must be 'sum' or 'mean', got {feature_reduction!r}.")
    width = student.shape[-1]
    if normalize:
        value = normalized_mse(student, teacher, mask, reduction, per_sample)  # summed over features
        return value / width if feature_reduction == "mean" else value
    value = hidden_mse(student, teacher, mask, reduction, per_sample)  # averaged over features
    return value * width if feature_reduction == "sum" else value

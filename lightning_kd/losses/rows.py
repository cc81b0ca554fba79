"""Reductions of per-row loss values computed on compact token rows.

Compact logits hold only some positions of a ``(B, N)`` batch (:mod:`lightning_kd.core.logit_rows`).
A loss computed on them has one value per kept row, ``(R,)``, in row-major order of its ``(B, N)``
``positions`` mask. :func:`reduce_rows` gives exactly what :func:`~lightning_kd.losses.masking.reduce_masked`
(and its per-example form) gives for the same values spread to ``(B, N)`` with ``positions`` as the mask:
the rows outside the mask contribute nothing, and ``"gkd"`` still divides by every position.
"""

from __future__ import annotations

from torch import Tensor

from lightning_kd.losses.masking import Reduction


def reduce_rows(values: Tensor, positions: Tensor, reduction: Reduction = "masked_mean", per_sample: bool = False) -> Tensor:
    """Reduce per-row ``values`` ``(R,)`` at the ``(B, N)`` bool ``positions`` to a scalar, or to ``(B,)``.

    Args:
        values: one loss value per kept row, in row-major order of ``positions``.
        positions: ``(B, N)`` bool, ``R`` of them true.
        reduction: ``"masked_mean"`` (divide by the kept rows, of the example when ``per_sample``) or
            ``"gkd"`` (divide by every position: ``B·N``, or ``N`` per example).
        per_sample: keep the batch dimension (multi-teacher strategies weight examples).
    """
    if reduction not in ("masked_mean", "gkd"):
        raise ValueError(f"Unknown reduction {reduction!r}; choose 'masked_mean' or 'gkd'.")
    positions = positions.bool()
    if values.shape[0] != int(positions.sum()):
        raise ValueError(f"{values.shape[0]} row values for {int(positions.sum())} positions.")
    if not per_sample:
        if reduction == "gkd":
            return values.sum() / positions.numel()
        return values.sum() / max(values.shape[0], 1)
    totals = values.new_zeros(positions.shape[0]).index_add(0, positions.nonzero()[:, 0], values)
    if reduction == "gkd":
        return totals / positions.shape[1]
    return totals / positions.sum(dim=1).clamp_min(1).to(values.dtype)

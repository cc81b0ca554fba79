"""RAIL-KD's loss — Haidar et al. (2022), "RAIL-KD: RAndom Intermediate Layer Mapping for Knowledge
Distillation" (Findings of NAACL): distances between L2-normalised projections of pooled layer
states (pooling: :mod:`lightning_kd.core.pooling`).

Shapes: projected vectors ``(B, u)`` in the concatenated variant or ``(B, m, u)`` (one row per
paired layer) in the layer-wise variant.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor

BatchReduction = Literal["sum", "mean"]


def rail_distance(
    student: Tensor,
    teacher: Tensor,
    layer_weights: Tensor | None = None,
    batch_reduction: BatchReduction = "sum",
    per_sample: bool = False,
) -> Tensor:
    """``Σ_u (n(s) − n(t))²`` per example (and per layer), with ``n`` the L2 normalisation.

    Args:
        student: projected student vectors, ``(B, u)`` or ``(B, m, u)``.
        teacher: projected teacher vectors of the same shape.
        layer_weights: ``(m,)`` per-layer weights ``α_j`` for ``(B, m, u)`` inputs (default all 1).
        batch_reduction: ``"sum"`` over the batch (the reference: the loss grows with the batch) or
            ``"mean"``.
        per_sample: return ``(B,)`` per-example values instead of the reduced scalar.
    """
    if student.shape != teacher.shape:
        raise ValueError(f"Projected shapes differ: student {tuple(student.shape)} vs teacher {tuple(teacher.shape)}.")
    rows = (F.normalize(student.float(), dim=-1) - F.normalize(teacher.float(), dim=-1)).pow(2).sum(dim=-1)
    if rows.dim() == 2:
        if layer_weights is not None:
            rows = rows * layer_weights.to(rows)[None, :]
        rows = rows.sum(dim=1)
    elif layer_weights is not None:
        raise ValueError("layer_weights apply to layer-wise (B, m, u) inputs only.")
    if per_sample:
        return rows
    if batch_reduction == "sum":
        return rows.sum()
    if batch_reduction == "mean":
        return rows.mean()
    raise ValueError(f"batch_reduction must be 'sum' or 'mean', got {batch_reduction!r}.")

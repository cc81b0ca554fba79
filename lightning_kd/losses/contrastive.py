"""LRC-BERT's contrastive loss over intermediate representations (COS-NCE with in-batch negatives).

Shapes: ``L`` layer pairs, ``B`` examples, ``N`` positions, ``D`` the (projected) width.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

PositiveTerm = Literal["reference", "paper"]


def cosine_distance_matrix(
    student: Tensor, teacher: Tensor, student_rows: Tensor | None = None, teacher_rows: Tensor | None = None
) -> Tensor:
    """``G[b, b'] = 1 − mean_p cos(student[p, b], teacher[p, b'])`` over every (layer, position) ``p``.

    Args:
        student: ``(L, B, N, D)`` student states (already projected to the teacher's width).
        teacher: ``(L, B', N, D)`` teacher states (``B'`` may exceed ``B`` when negatives are gathered).
        student_rows: ``(B, N)`` bool, the positions of each student example that enter the comparison, or
            ``None`` for every position (the reference). A left-out position contributes a cosine of 0 (its
            unit vector is zeroed) and still counts in the ``L·N`` of the mean, so it adds a constant to the
            distance and no gradient.
        teacher_rows: ``(B', N)`` bool, likewise for the teacher (both or neither).

    Returns:
        ``(B, B')``. No ε in the cosine (as the reference): without ``*_rows``, an all-zero vector gives NaN;
        with them, a left-out all-zero vector (an aligned teacher's partnerless token) is simply 0.
    """
    if (student_rows is None) != (teacher_rows is None):
        raise ValueError("Pass the positions that enter for both the student and the teacher, or for neither.")
    s, t = _unit(student, student_rows), _unit(teacher, teacher_rows)
    positions = s.shape[0] * s.shape[2]
    return 1.0 - torch.einsum("lbnd,lcnd->bc", s, t) / positions


def _unit(states: Tensor, rows: Tensor | None) -> Tensor:
    """``(L, B, N, D)`` states divided by their norms; zero vectors at positions ``rows`` leaves out."""
    states = states.float()
    if rows is None:
        return states / states.norm(dim=-1, keepdim=True)
    keep = rows.bool()[None, :, :, None]
    states = states * keep
    # A left-out row is zero: dividing it by 1 instead of its zero norm keeps it (and its gradient) finite.
    return states / torch.where(keep, states.norm(dim=-1, keepdim=True), 1.0)


def contrastive_per_sample(distances: Tensor, offset: int = 0, positive_term: PositiveTerm = "reference") -> Tensor:
    """Per-example COS-NCE loss ``ℓ_b`` from a distance matrix.

    Args:
        distances: ``(B, B')`` with the positive pair of row ``b`` at column ``offset + b``.
        offset: column of row 0's positive (a rank's offset into gathered negatives).
        positive_term: ``"reference"``: ``ℓ_b = 1 + 1.5·G[b,b] − Σ_{b'≠b} G[b,b'] / (2(B'−1))`` (the GKD
            code subtracts the diagonal ``B'`` times); ``"paper"``: positive coefficient 1,
            ``ℓ_b = G[b,b] + mean_{b'≠b} (2 − G[b,b']) / 2``.

    Returns:
        ``(B,)``.
    """
    rows, columns = distances.shape
    if columns < 2:
        raise ValueError("LRC-BERT's contrastive loss needs at least 2 examples per batch (the others are the negatives).")
    index = torch.arange(rows, device=distances.device)
    positive = distances[index, index + offset]
    negatives = (distances.sum(dim=1) - positive) / (2 * (columns - 1))
    coefficient = 1.5 if positive_term == "reference" else 1.0
    return 1.0 + coefficient * positive - negatives

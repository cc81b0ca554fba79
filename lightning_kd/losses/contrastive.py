"""LRC-BERT's contrastive loss over intermediate representations (COS-NCE with in-batch negatives).

Shapes: ``L`` layer pairs, ``B`` examples, ``N`` positions, ``D`` the (projected) width.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

PositiveTerm = Literal["reference", "paper"]


def cosine_distance_matrix(student: Tensor, teacher: Tensor) -> Tensor:
    """``G[b, b'] = 1 − mean_p cos(student[p, b], teacher[p, b'])`` over every (layer, position) ``p``.

    Args:
        student: ``(L, B, N, D)`` student states (already projected to the teacher's width).
        teacher: ``(L, B', N, D)`` teacher states (``B'`` may exceed ``B`` when negatives are gathered).

    Returns:
        ``(B, B')``. No ε in the cosine (as the reference): an all-zero vector gives NaN.
    """
    s = student.float() / student.float().norm(dim=-1, keepdim=True)
    t = teacher.float() / teacher.float().norm(dim=-1, keepdim=True)
    positions = s.shape[0] * s.shape[2]
    return 1.0 - torch.einsum("lbnd,lcnd->bc", s, t) / positions


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

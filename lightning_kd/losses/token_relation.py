"""ERDistill's two per-layer terms: token relations (local) and vocabulary projections (global).

Both compare representations *within* each model, so student and teacher widths may differ.

* **Local** — the Gram matrix of a layer's token states, ``G = X Xᵀ`` of shape ``(B, N, N)``, scaled
  by the **sequence length** ``n`` (not the width): ``mse`` compares ``G/n``; ``kl`` compares the
  row distributions ``softmax(G/√n)`` with ``KL(teacher ‖ student)`` per query row.
* **Global** — each model's states projected onto its *own* input word-embedding matrix,
  ``P = X Eᵀ`` of shape ``(B, N, V)`` (no bias, no temperature), compared with ``mse`` (mean over
  the vocabulary) or row-wise ``kl``. This needs a shared vocabulary, and states as wide as the
  rows (factorised families pass states already mapped to the embedding width).

Masking: with a ``(B, N)`` token mask, padded tokens leave both the rows and (for the Gram matrix)
the columns, and ``n`` is each example's number of kept tokens. Without a mask every position
counts and ``n`` is the padded length ``N`` (the GKD reference).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from lightning_kd.losses.logits import logits_mse, soft_kl
from lightning_kd.losses.masking import Reduction, reduce_masked, reduce_masked_per_sample

RelationLoss = Literal["kl", "mse"]


def _lengths(states: Tensor, mask: Tensor | None) -> Tensor:
    """Per-example sequence length ``n`` as a ``(B, 1, 1)`` float tensor."""
    if mask is None:
        return torch.full((states.shape[0], 1, 1), float(states.shape[1]), device=states.device)
    return mask.float().sum(dim=1).clamp_min(1.0)[:, None, None]


def token_relation_loss(
    student: Tensor,
    teacher: Tensor,
    mask: Tensor | None = None,
    loss: RelationLoss = "kl",
    reduction: Reduction = "masked_mean",
    per_sample: bool = False,
) -> Tensor:
    """Distance between the student's and the teacher's token-relation (Gram) matrices.

    Args:
        student: ``(B, N, d_s)`` student token states.
        teacher: ``(B, N, d_t)`` teacher token states.
        mask: ``None`` or a ``(B, N)`` mask of real tokens.
        loss: ``"mse"``: mean over kept pairs ``(i, j)`` of ``(G^S_ij/n − G^T_ij/n)²``; ``"kl"``: mean
            over kept rows ``i`` of ``KL(softmax_j(G^T_i/√n) ‖ softmax_j(G^S_i/√n))`` over kept ``j``.
        reduction: masked reduction (see :mod:`lightning_kd.losses.masking`).
        per_sample: return ``(B,)`` per-example values instead of a scalar.
    """
    length = _lengths(student, mask)
    gram_s = student.float() @ student.float().transpose(1, 2)
    gram_t = teacher.float() @ teacher.float().transpose(1, 2)
    if loss == "mse":
        values = (gram_s / length - gram_t / length).pow(2)
        pairs = None if mask is None else mask.bool()[:, :, None] & mask.bool()[:, None, :]
        return reduce_masked_per_sample(values, pairs, reduction) if per_sample else reduce_masked(values, pairs, reduction)
    if loss != "kl":
        raise ValueError(f"loss must be 'kl' or 'mse', got {loss!r}.")
    scores_s, scores_t = gram_s / length.sqrt(), gram_t / length.sqrt()
    if mask is not None:  # padded keys get probability 0 in both models, so they add nothing to a row
        keys = ~mask.bool()[:, None, :]
        scores_s = scores_s.masked_fill(keys, torch.finfo(scores_s.dtype).min)
        scores_t = scores_t.masked_fill(keys, torch.finfo(scores_t.dtype).min)
    return soft_kl(scores_s, scores_t, 1.0, mask, reduction, t2_scale=False, per_sample=per_sample)


def vocabulary_projection_loss(
    student: Tensor,
    teacher: Tensor,
    student_embeddings: Tensor,
    teacher_embeddings: Tensor,
    mask: Tensor | None = None,
    loss: RelationLoss = "kl",
    reduction: Reduction = "masked_mean",
    per_sample: bool = False,
) -> Tensor:
    """Distance between ``X_s E_sᵀ`` and ``X_t E_tᵀ``, each model's states scored against its own vocabulary.

    Args:
        student: ``(B, N, d_s)`` student token states.
        teacher: ``(B, N, d_t)`` teacher token states.
        student_embeddings: ``(V, d_s)`` the student's input word embeddings (gradient flows into them).
        teacher_embeddings: ``(V, d_t)`` the teacher's input word embeddings.
        mask: ``None`` or a ``(B, N)`` mask of real tokens (rows to keep).
        loss: ``"mse"`` (mean over the vocabulary, then over kept rows) or ``"kl"`` (row-wise
            ``KL(softmax(P^T) ‖ softmax(P^S))``, no temperature).
        reduction: masked reduction (see :mod:`lightning_kd.losses.masking`).
        per_sample: return ``(B,)`` per-example values instead of a scalar.
    """
    if student_embeddings.shape[0] != teacher_embeddings.shape[0]:
        raise ValueError(
            f"The vocabulary projection needs one vocabulary: the student has {student_embeddings.shape[0]} "
            f"embedding rows, the teacher {teacher_embeddings.shape[0]}."
        )
    for role, states, rows in (("student", student, student_embeddings), ("teacher", teacher, teacher_embeddings)):
        if states.shape[-1] != rows.shape[-1]:
            raise ValueError(
                f"The {role}'s states are {states.shape[-1]} wide but its embedding rows {rows.shape[-1]} (factorised "
                "embeddings): map the states first with lightning_kd.models.embedding_projection.states_in_embedding_space."
            )
    projected_s = student.float() @ student_embeddings.float().t()
    projected_t = teacher.float() @ teacher_embeddings.float().t()
    if loss == "mse":
        return logits_mse(projected_s, projected_t, mask, reduction, per_sample=per_sample)
    if loss != "kl":
        raise ValueError(f"loss must be 'kl' or 'mse', got {loss!r}.")
    return soft_kl(projected_s, projected_t, 1.0, mask, reduction, t2_scale=False, per_sample=per_sample)

"""Uncertainty — dynamic teacher adoption from Li, Lin, Ren, Li, Zhou and Sun (2021), "Dynamic
Knowledge Distillation for Pre-trained Language Models" (EMNLP 2021).

The student's normalised prediction entropy ``u_b = H(softmax(z^S_b)) / log C`` decides, per
example, which teacher it learns from: uncertain examples go to the small teacher, confident ones to
the large one. With the teachers ranked by size ``j = 0 … N−1`` (small → large):

* ``mode="soft"``: ``a_{b,j} ∝ u_b + (1 − 2u_b)·j/(N−1)``, normalised so ``Σ_j a_{b,j} = N``
  (two teachers: ``(2u, 2(1−u))``);
* ``mode="hard"``: examples sorted by decreasing ``u`` (rank ``ρ_b = 1…B``) go to teacher rank
  ``⌈ρ_b·N/B⌉ − 1`` with weight 1 (the most uncertain ``1/N`` of the batch to the smallest teacher);
  a batch smaller than ``N`` falls back to soft weights. These weights sum to 1, not ``N``, so the
  soft term is ``1/N`` of its soft-mode size (the reference's scale, kept).

Then ``L = (1/N) Σ_i [mean_b(a_{b,r(i)} · soft_{i,b}) + other terms_i] + hard_weight · L_hard``; the
hard loss is the method's own term, added once outside the strategy. Terms are read by role and
shape (:mod:`lightning_kd.core.terms`): every per-example term, not only the soft one, is weighted
by ``a_{b,r(i)}``; a scalar term (one the method cannot compute per example) enters unweighted. For
token-level (MLM) logits ``u_b`` is the mean entropy over the positions chosen by ``positions``.

Where we differ from the GKD reference (``--multi_teacher_model=uncertainty``), and why:

* **Weights are detached by default**: the paper treats them as weights; the reference lets the
  gradient flow through ``u`` into the student. ``detach_weights: false`` restores that.
* **Masked mean over positions** (``reduction="masked_mean"``): the reference multiplies masked
  logits by 0 (entropy ``log C``, ``u = 1``) and averages over every position; ``reduction="gkd"``
  reproduces it.
* **One-class logits raise**: ``log C = 0`` for a regression head (the reference divides by zero).
* ``--uncertainty_wo_rate`` is :class:`~lightning_kd.core.multi_teacher.Average`; ``--uncertainty_wo_hard``
  is the method's ``hard_weight: 0``. ``--uncertainty_inter_entropy`` (intermediate terms weighted by
  ``u``) is not reproduced as a switch: here an intermediate term is weighted by ``a_{b,r(i)}``
  exactly when its method gives it per example (MobileBERT's attention and hidden terms do; PKD's
  patience stays a scalar).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor

from lightning_kd.core.logit_rows import LogitRows, sum_per_example
from lightning_kd.core.multi_teacher import MultiTeacherStrategy, TeacherStep
from lightning_kd.core.terms import LossTerms, weighted_sum
from lightning_kd.losses.masking import Reduction, padding_mask, target_mask

Positions = Literal["masked_tokens", "all_tokens", "all_positions"]


def position_mask(batch: dict[str, Tensor], positions: Positions) -> Tensor | None:
    """Which token positions count, ``(B, N)`` bool, or ``None`` for all of them.

    ``"masked_tokens"``: positions with an MLM label (GKD ``loss_mask``); ``"all_tokens"``: non-padding
    tokens (GKD ``*_only_mask_pad``); ``"all_positions"``: every position (GKD ``*_wo_loss_mask``).
    """
    if positions == "all_positions":
        return None
    labels = batch.get("labels")
    if positions == "masked_tokens" and labels is not None and labels.dim() == 2:
        return target_mask(labels)
    return padding_mask(batch["attention_mask"]) if "attention_mask" in batch else None


def position_rows(positions: Positions) -> LogitRows:
    """The token-logit rows (:data:`~lightning_kd.core.logit_rows.LogitRows`) ``positions`` reads."""
    return {"masked_tokens": "labelled", "all_tokens": "tokens", "all_positions": "all"}[positions]  # type: ignore[return-value]


def student_uncertainty(logits: Tensor, mask: Tensor | None = None, reduction: Reduction = "masked_mean") -> Tensor:
    """Normalised prediction entropy ``H(softmax(z))/log C`` per example, shape ``(B,)``, in ``[0, 1]``.

    Args:
        logits: ``(B, C)`` or ``(B, N, C)`` student logits (``C ≥ 2``).
        mask: ``(B, N)`` positions to average over for token logits (ignored for ``(B, C)``).
        reduction: ``"masked_mean"`` over the kept positions, or ``"gkd"``: masked positions count
            as uniform predictions (``u = 1``) and every position is averaged (reference).
    """
    classes = logits.shape[-1]
    if classes < 2:
        raise ValueError(
            "Uncertainty weights teachers by the student's prediction entropy, which needs at least 2 classes; "
            "a one-output (regression) head has none. Use Average or MTBERT for regression tasks."
        )
    log_p = torch.log_softmax(logits.float(), dim=-1)
    entropy = -(log_p.exp() * log_p).sum(dim=-1) / math.log(classes)
    if entropy.dim() == 1:
        return entropy
    if mask is None:
        return entropy.mean(dim=1)
    mask = mask.bool()
    if reduction == "gkd":
        return torch.where(mask, entropy, torch.ones_like(entropy)).mean(dim=1)
    return (entropy * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1)


def row_uncertainty(rows: Tensor, positions: Tensor, reduction: Reduction = "masked_mean") -> Tensor:
    """:func:`student_uncertainty` of token logits given as compact ``(R, V)`` rows at the ``(B, N)``
    ``positions`` to average over: the same ``(B,)`` values as the whole logits with that mask."""
    classes = rows.shape[-1]
    log_p = torch.log_softmax(rows.float(), dim=-1)
    totals = sum_per_example(-(log_p.exp() * log_p).sum(dim=-1) / math.log(classes), positions)
    counts = positions.sum(dim=1).to(totals.dtype)
    if reduction == "gkd":  # positions off the mask count as uniform predictions (u = 1)
        return (totals + positions.shape[1] - counts) / positions.shape[1]
    return totals / counts.clamp_min(1)


def uncertainty_weights(u: Tensor, num_teachers: int, mode: Literal["soft", "hard"]) -> Tensor:
    """Per-example weights of the teachers by size rank, shape ``(B, N)`` (column ``j`` = rank ``j``)."""
    batch = u.shape[0]
    if num_teachers == 1:
        return torch.ones(batch, 1, dtype=u.dtype, device=u.device)
    if mode == "hard" and batch >= num_teachers:
        order = torch.argsort(u, descending=True, stable=True)
        rho = torch.empty_like(order)
        rho[order] = torch.arange(1, batch + 1, device=u.device)
        rank = (rho * num_teachers + batch - 1) // batch - 1  # ⌈ρ·N/B⌉ − 1 in integers
        return torch.nn.functional.one_hot(rank, num_teachers).to(u.dtype)
    j = torch.arange(num_teachers, dtype=u.dtype, device=u.device) / (num_teachers - 1)
    raw = u[:, None] + (1 - 2 * u[:, None]) * j[None, :]
    return raw / raw.sum(dim=1, keepdim=True) * num_teachers


class Uncertainty(MultiTeacherStrategy):
    """Per-example teacher weights from the student's prediction entropy (small teacher ← uncertain).

    Args:
        mode: ``"soft"`` weights every teacher by ``u`` (default), ``"hard"`` assigns each example to
            one teacher by its uncertainty rank in the batch (GKD ``--uncertainty_hard``).
        teacher_order: size rank of each teacher, in ``teachers`` order (0 = smallest); default:
            the teachers are listed from smallest to largest. GKD ``--uncertainty_teacher_seq``
            (``"1:0"`` is ``[1, 0]``: the first teacher is the larger one).
        positions: for token-level (MLM) logits, the positions whose entropy is averaged:
            ``"masked_tokens"`` (GKD default), ``"all_tokens"`` (GKD ``--uncertainty_only_mask_pad``) or
            ``"all_positions"`` (GKD ``--uncertainty_wo_loss_mask``). Task logits have one row per
            example, so it does not apply to them.
        reduction: ``"masked_mean"`` or ``"gkd"`` (masked positions count as ``u = 1``; parity).
        detach_weights: stop the gradient through the weights (default, as in the paper); ``False``
            lets it flow into the student as in the reference.
    """

    per_sample = True

    def __init__(
        self,
        mode: Literal["soft", "hard"] = "soft",
        teacher_order: list[int] | None = None,
        positions: Positions = "masked_tokens",
        reduction: Reduction = "masked_mean",
        detach_weights: bool = True,
    ) -> None:
        super().__init__()
        if mode not in ("soft", "hard"):
            raise ValueError(f"mode must be 'soft' or 'hard', got {mode!r}.")
        if teacher_order is not None and sorted(teacher_order) != list(range(len(teacher_order))):
            raise ValueError(
                f"teacher_order gives each teacher's size rank and must be a permutation of 0..N-1, got {teacher_order}."
            )
        if positions not in ("masked_tokens", "all_tokens", "all_positions"):
            raise ValueError(f"positions must be 'masked_tokens', 'all_tokens' or 'all_positions', got {positions!r}.")
        if reduction not in ("masked_mean", "gkd"):
            raise ValueError(f"reduction must be 'masked_mean' or 'gkd', got {reduction!r}.")
        self.mode, self.teacher_order = mode, teacher_order
        self.positions, self.reduction, self.detach_weights = positions, reduction, detach_weights

    def student_logit_rows(self) -> LogitRows:
        return position_rows(self.positions)  # the student's entropy at these positions

    def weights(self, step: TeacherStep) -> Tensor:
        """``(B, K)`` weight of each example for each teacher that ran (column ``k`` = ``per_teacher[k]``)."""
        logits = step.student.logits
        if step.student.logit_rows is not None:  # compact MLM rows: the entropy of the positions' rows
            mask = position_mask(step.batch, self.positions)
            positions = mask.bool() if mask is not None else torch.ones_like(step.student.logit_rows)
            u = row_uncertainty(step.student.logits_at(positions), positions, self.reduction)
        else:
            u = student_uncertainty(logits, position_mask(step.batch, self.positions) if logits.dim() == 3 else None, self.reduction)
        if self.detach_weights:
            u = u.detach()
        by_rank = uncertainty_weights(u, len(step.teacher_indices), self.mode)
        return by_rank[:, self.ranks(step.teacher_indices)]

    def ranks(self, indices: list[int]) -> list[int]:
        if self.teacher_order is None:
            return list(range(len(indices)))
        if len(self.teacher_order) != len(indices):
            raise ValueError(
                f"teacher_order ranks {len(self.teacher_order)} teachers but {len(indices)} teachers ran; "
                "give one rank per teacher."
            )
        return [self.teacher_order[i] for i in indices]

    def combine(self, per_teacher: Sequence[Mapping[str, Tensor]], step: TeacherStep) -> LossTerms:
        weights = self.weights(step)
        return weighted_sum(per_teacher, list(weights.unbind(dim=1)), divisor=len(per_teacher), strategy="Uncertainty")

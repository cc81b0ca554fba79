"""Attention-level losses: score MSE (TinyBERT), attention-distribution KL (MiniLM), self-relation KL
(MiniLM value relation, MiniLMv2 Q/K/V relations) and the GKD reference's double-softmax form.

Shapes:

* attention scores / probabilities: ``(B, h, N, N)``, query ``i`` on dim −2, key ``j`` on dim −1;
* per-head vectors (values, relation heads): ``(B, A, N, d_a)``;
* ``attention_mask``: ``(B, N)``, 1 (or True) for real tokens, 0 for padding;
* ``key_mask`` (optional): ``(B, 1, N, N)`` boolean (query, key) pairs the model lets attend, for
  models that mask more than padded keys (causal, sliding window; see
  :meth:`~lightning_kd.core.features.Features.key_mask`). It replaces the key-padding mask built from
  ``attention_mask``; query rows are still selected with ``attention_mask``.

Every function computes in float32, reduces with :mod:`lightning_kd.losses.masking`
(``"masked_mean"`` library default, ``"gkd"`` reference parity) and can return one value per
example (``per_sample=True``, shape ``(B,)``) for multi-teacher strategies that weight examples.
KL divergences put the teacher first: ``KL(teacher ‖ student)``.

References: Jiao et al. 2020 (TinyBERT, arXiv:1909.10351); Wang et al. 2020 (MiniLM,
arXiv:2002.10957); Wang et al. 2021 (MiniLMv2, arXiv:2012.15828).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_kd.losses.masking import (
    Reduction,
    reduce_masked,
    reduce_masked_per_sample,
)

_REDUCTIONS = ("masked_mean", "gkd")


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"Unknown reduction {reduction!r}; choose 'masked_mean' or 'gkd'.")


def _reduce(values: Tensor, mask: Tensor | None, reduction: Reduction, per_sample: bool) -> Tensor:
    _check_reduction(reduction)
    return reduce_masked_per_sample(values, mask, reduction) if per_sample else reduce_masked(values, mask, reduction)


def key_padding_mask(attention_mask: Tensor) -> Tensor:
    """``(B, N)`` token mask → ``(B, 1, 1, N)`` boolean mask of real *keys* (broadcasts over heads and queries)."""
    return attention_mask.bool()[:, None, None, :]


def _keys(attention_mask: Tensor | None, key_mask: Tensor | None) -> Tensor | None:
    """The boolean mask of attended keys: the model's own ``key_mask`` when given, else key padding."""
    if key_mask is not None:
        return key_mask.bool()
    return key_padding_mask(attention_mask) if attention_mask is not None else None


def query_padding_mask(attention_mask: Tensor) -> Tensor:
    """``(B, N)`` token mask → ``(B, 1, N)`` boolean mask of real *query rows* (broadcasts over heads)."""
    return attention_mask.bool()[:, None, :]


def attention_score_mse(
    student_scores: Tensor,
    teacher_scores: Tensor,
    attention_mask: Tensor | None = None,
    reduction: Reduction = "masked_mean",
    per_sample: bool = False,
    key_mask: Tensor | None = None,
) -> Tensor:
    """TinyBERT's attention loss: mean squared difference between pre-softmax scores ``QKᵀ/√d_h``.

    Entries whose key is padding are set to exactly 0 in both tensors first (as the official
    TinyBERT does), so they add no error whatever mask constant or dtype each model uses.

    Args:
        student_scores: ``(B, h, N, N)`` unmasked student scores.
        teacher_scores: ``(B, h, N, N)`` unmasked teacher scores (same head count).
        attention_mask: ``(B, N)`` token mask, or ``None`` to compare every entry as is.
        reduction: ``"masked_mean"``: mean over entries whose query *and* key are real tokens.
            ``"gkd"``: sum over all entries divided by ``B·h·N·N`` (the reference: padded query
            rows still count, zeroed padded-key entries stay in the denominator).
        per_sample: return ``(B,)`` instead of a scalar.
        key_mask: the model's ``(B, 1, N, N)`` attended pairs (causal, windowed models); entries it
            excludes are treated as padded keys.
    """
    _check_reduction(reduction)
    if student_scores.shape != teacher_scores.shape:
        raise ValueError(
            f"Attention score shapes differ: student {tuple(student_scores.shape)} vs teacher "
            f"{tuple(teacher_scores.shape)}; score matching needs equal head counts."
        )
    student, teacher = student_scores.float(), teacher_scores.float()
    keys = _keys(attention_mask, key_mask)
    if keys is None:
        return _reduce((student - teacher).pow(2), None, reduction, per_sample)
    entries = keys & attention_mask.bool()[:, None, :, None] if attention_mask is not None else keys  # (B, 1, N, N): real query and real key
    if reduction == "masked_mean" and not per_sample:
        # The fast path of the default (the scores are the largest tensors of a TinyBERT step): zero
        # every excluded entry in both models, one fused squared-error sum, and the count from the
        # (B, 1, N, N) mask rather than from a mask expanded over the heads.
        weights = entries.to(student.dtype)
        total = F.mse_loss(student * weights, teacher * weights, reduction="sum")
        return total / (weights.sum() * student.shape[1]).clamp_min(1.0)
    squared = (student.masked_fill(~keys, 0.0) - teacher.masked_fill(~keys, 0.0)).pow(2)
    if reduction == "gkd":
        return _reduce(squared, None, reduction, per_sample)
    return _reduce(squared, entries, reduction, per_sample)


def masked_log_softmax(scores: Tensor, attention_mask: Tensor | None = None, key_mask: Tensor | None = None) -> Tensor:
    """``log_softmax`` over keys with padded keys excluded (their log-probability is a huge negative).

    Args:
        scores: ``(B, h, N, N)`` (or ``(B, A, N, N)`` relation logits).
        attention_mask: ``(B, N)`` token mask, or ``None`` for no masking.
        key_mask: the model's ``(B, 1, N, N)`` attended pairs, replacing the key-padding mask.
    """
    scores = scores.float()
    keys = _keys(attention_mask, key_mask)
    if keys is not None:
        scores = scores.masked_fill(~keys, torch.finfo(scores.dtype).min)
    return scores.log_softmax(dim=-1)


def attention_kl(
    student_scores: Tensor,
    teacher_scores: Tensor,
    attention_mask: Tensor | None = None,
    mask_queries: bool = False,
    reduction: Reduction = "masked_mean",
    per_sample: bool = False,
    key_mask: Tensor | None = None,
) -> Tensor:
    """Row-wise ``KL(softmax(teacher) ‖ softmax(student))`` between attention distributions.

    MiniLM's attention-transfer loss, computed from pre-softmax scores through ``log_softmax`` so
    it is exact and stable. Padded keys (when ``attention_mask`` is given) get probability 0 in both
    distributions and contribute nothing.

    Args:
        student_scores: ``(B, h, N, N)`` unmasked pre-softmax student scores (or relation logits).
        teacher_scores: ``(B, h, N, N)`` unmasked teacher scores; the head count must match.
        attention_mask: ``(B, N)`` token mask applied to keys, or ``None``.
        mask_queries: also leave padded query rows out of the mean (needs ``attention_mask``).
        reduction: how the ``(B, h, N)`` row values are averaged when query rows are masked.
        per_sample: return ``(B,)`` instead of a scalar.
        key_mask: the model's ``(B, 1, N, N)`` attended pairs (causal, windowed models), replacing
            the key-padding mask; both distributions are over these keys.

    Returns:
        The mean over query rows (``B·h·N`` rows, or the real ones with ``mask_queries``).
    """
    if student_scores.shape != teacher_scores.shape:
        raise ValueError(
            f"Attention shapes differ: student {tuple(student_scores.shape)} vs teacher {tuple(teacher_scores.shape)}; "
            "attention distributions can only be compared head by head with equal head counts."
        )
    if mask_queries and attention_mask is None:
        raise ValueError("mask_queries=True needs attention_mask.")
    keys = _keys(attention_mask, key_mask)
    log_s = masked_log_softmax(student_scores, key_mask=keys)
    log_t = masked_log_softmax(teacher_scores, key_mask=keys)
    pointwise = log_t.exp() * (log_t - log_s)
    if keys is not None:
        pointwise = pointwise.masked_fill(~keys, 0.0)
    rows = pointwise.sum(dim=-1)
    row_mask = query_padding_mask(attention_mask) if mask_queries else None
    return _reduce(rows, row_mask, reduction, per_sample)


def attention_probs_double_softmax_kl(
    student_probs: Tensor,
    teacher_probs: Tensor,
    attention_mask: Tensor | None = None,
    mask_queries: bool = False,
    reduction: Reduction = "masked_mean",
    per_sample: bool = False,
) -> Tensor:
    """GKD-parity form of MiniLM's attention term: ``KL(softmax(P_T) ‖ softmax(P_S))`` over *probabilities*.

    The reference feeds attention probabilities into a KL that applies softmax again, so values in
    ``[0, 1]`` are softened to nearly uniform rows: a weak, rescaled squared error rather than the
    paper's KL. Kept only to reproduce GKD numbers; prefer :func:`attention_kl`.

    Args:
        student_probs: ``(B, h, N, N)`` attention probabilities (padded keys already 0).
        teacher_probs: ``(B, h, N, N)`` teacher probabilities.
        attention_mask: ``(B, N)``; only used with ``mask_queries`` (the reference masks nothing).
        mask_queries: leave padded query rows out of the mean.
        reduction: how rows are averaged when query rows are masked.
        per_sample: return ``(B,)`` instead of a scalar.
    """
    if student_probs.shape != teacher_probs.shape:
        raise ValueError(
            f"Attention shapes differ: student {tuple(student_probs.shape)} vs teacher {tuple(teacher_probs.shape)}; "
            "attention distributions can only be compared head by head with equal head counts."
        )
    if mask_queries and attention_mask is None:
        raise ValueError("mask_queries=True needs attention_mask.")
    # The second softmax runs over every key, padded ones included, exactly as in the reference.
    log_s, log_t = student_probs.float().log_softmax(dim=-1), teacher_probs.float().log_softmax(dim=-1)
    rows = (log_t.exp() * (log_t - log_s)).sum(dim=-1)
    row_mask = query_padding_mask(attention_mask) if mask_queries else None
    return _reduce(rows, row_mask, reduction, per_sample)


def split_relation_heads(vectors: Tensor, heads: int) -> Tensor:
    """``(B, N, d)`` → ``(B, A, N, d/A)``: cut the feature dimension into ``A`` relation heads.

    Raises:
        ValueError: ``heads`` does not divide ``d``.
    """
    batch, length, width = vectors.shape
    if heads < 1 or width % heads:
        raise ValueError(f"{heads} relation heads do not divide the width {width}; choose a divisor of {width}.")
    return vectors.view(batch, length, heads, width // heads).transpose(1, 2)


def self_relation_logits(vectors: Tensor) -> Tensor:
    """Scaled dot-product self-relation ``X Xᵀ / √d_a`` of per-head vectors: ``(B, A, N, d_a)`` → ``(B, A, N, N)``.

    Computed in float32 even under autocast (which would run the product in bf16/fp16).
    """
    vectors = vectors.float()
    with torch.autocast(device_type=vectors.device.type, enabled=False):
        return vectors @ vectors.transpose(-1, -2) / math.sqrt(vectors.shape[-1])


def relation_kl(
    student_vectors: Tensor,
    teacher_vectors: Tensor,
    attention_mask: Tensor | None = None,
    mask_padding: bool = False,
    reduction: Reduction = "masked_mean",
    per_sample: bool = False,
    key_mask: Tensor | None = None,
    mask_queries: bool | None = None,
) -> Tensor:
    """``KL(softmax(T Tᵀ/√d_T) ‖ softmax(S Sᵀ/√d_S))`` per query row: MiniLM's value relation and
    MiniLMv2's Q-Q / K-K / V-V relations.

    Each model is scaled by its own head size, so the widths may differ; the head counts may not.

    Args:
        student_vectors: ``(B, A, N, d_S/A)`` student per-head vectors.
        teacher_vectors: ``(B, A, N, d_T/A)`` teacher per-head vectors.
        attention_mask: ``(B, N)`` token mask; used only with ``mask_padding``.
        mask_padding: exclude padded keys from the softmax and padded query rows from the mean
            (the GKD reference masks nothing).
        reduction: how rows are averaged when ``mask_padding`` is on.
        per_sample: return ``(B,)`` instead of a scalar.
        key_mask: the models' ``(B, 1, N, N)`` attended pairs (causal, windowed models): the
            relations follow the attention the models compute, so these keys are always the ones
            related (padded keys included or not by this mask); ``mask_padding`` still selects rows.
        mask_queries: with ``mask_padding``, whether padded query rows leave the mean (``None`` or
            ``True``, the default) or stay in it (``False``: PaddleNLP's MiniLMv2, which adds the
            key mask to the relation logits and averages every row). Needs ``mask_padding``.
    """
    if student_vectors.shape[:3] != teacher_vectors.shape[:3]:
        raise ValueError(
            f"Relation inputs differ in (batch, heads, length): student {tuple(student_vectors.shape)} vs teacher "
            f"{tuple(teacher_vectors.shape)}; both models must be split into the same number of heads."
        )
    if mask_padding and attention_mask is None:
        raise ValueError("mask_padding=True needs attention_mask.")
    if mask_queries is not None and not mask_padding:
        raise ValueError("mask_queries chooses which rows of a padding-masked relation count; it needs mask_padding=True.")
    mask = attention_mask if mask_padding else None
    return attention_kl(
        self_relation_logits(student_vectors),
        self_relation_logits(teacher_vectors),
        mask,
        mask_padding if mask_queries is None else mask_queries,
        reduction,
        per_sample,
        key_mask=key_mask,
    )

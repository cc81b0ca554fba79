"""Masked reductions shared by every loss.

Two reductions exist because the GKD reference and the published methods disagree:

* ``"masked_mean"`` (library default): the sum over kept positions divided by the number of kept
  positions, so padding or the MLM masking rate never dilutes a loss.
* ``"gkd"`` (parity): the same sum divided by *all* positions, masked ones included, which is what
  the reference's input/loss masking followed by a plain ``mean()`` computes.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Reduction = Literal["masked_mean", "gkd"]


def reduce_masked(values: Tensor, mask: Tensor | None = None, reduction: Reduction = "masked_mean") -> Tensor:
    """Reduce per-position loss values to a scalar.

    Args:
        values: per-position losses of any shape ``S``.
        mask: ``None`` (keep everything) or a 0/1 (or bool) tensor broadcastable to ``S``.
        reduction: ``"masked_mean"`` or ``"gkd"`` (see module docstring).

    Returns:
        A scalar. With ``"masked_mean"`` and an all-zero mask the result is ``0`` (not NaN) and still
        carries a graph, so it can be summed with other terms.
    """
    if mask is None:
        return values.mean()
    weights = mask.to(values.dtype).expand_as(values)
    total = (values * weights).sum()
    if reduction == "gkd":
        return total / values.numel()
    if reduction == "masked_mean":
        return total / weights.sum().clamp_min(1.0)
    raise ValueError(f"Unknown reduction {reduction!r}; choose 'masked_mean' or 'gkd'.")


def reduce_masked_per_sample(values: Tensor, mask: Tensor | None = None, reduction: Reduction = "masked_mean") -> Tensor:
    """Like :func:`reduce_masked` but keep the leading (batch) dimension: returns shape ``(B,)``.

    Multi-teacher strategies that weight teachers per example use this form.
    """
    flat = values.reshape(values.shape[0], -1)
    if mask is None:
        return flat.mean(dim=1)
    weights = mask.to(values.dtype).expand_as(values).reshape(values.shape[0], -1)
    total = (flat * weights).sum(dim=1)
    if reduction == "gkd":
        return total / flat.shape[1]
    if reduction == "masked_mean":
        return total / weights.sum(dim=1).clamp_min(1.0)
    raise ValueError(f"Unknown reduction {reduction!r}; choose 'masked_mean' or 'gkd'.")


def padding_mask(attention_mask: Tensor) -> Tensor:
    """Boolean mask of real (non-padding) tokens, shape ``(B, N)``."""
    return attention_mask.bool()


def target_mask(labels: Tensor, ignore_index: int = -100) -> Tensor:
    """Boolean mask of the positions that carry an MLM target, shape ``(B, N)``."""
    return labels.ne(ignore_index)


def zero_like_loss(reference: Tensor) -> Tensor:
    """A scalar zero that stays on ``reference``'s device and graph (for empty term lists)."""
    return reference.sum() * 0.0 if reference.requires_grad else torch.zeros((), device=reference.device)

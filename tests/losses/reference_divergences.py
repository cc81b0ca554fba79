"""Soft divergences written from their definitions on probability tables, in float64 (no library code):
the independent formulas the loss tests compare against."""

from __future__ import annotations

import torch


def kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``Σ a (log a − log b)`` over the last dimension."""
    return (a * (a.log() - b.log())).sum(-1)


def divergence_of_probabilities(kind: str, p: torch.Tensor, q: torch.Tensor, beta: float, alpha: float) -> torch.Tensor:
    """Per row, the divergence ``kind`` between the teacher's ``p`` and the student's ``q`` (``(…, K)`` tables)."""
    if kind == "kl":
        return kl(p, q)
    if kind == "ce":
        return -(p * q.log()).sum(-1)
    if kind == "reverse_kl":
        return kl(q, p)
    if kind == "jsd":
        m = beta * p + (1 - beta) * q
        return beta * kl(p, m) + (1 - beta) * kl(q, m)
    if kind == "skew_kl":
        return kl(p, alpha * p + (1 - alpha) * q)
    if kind == "skew_reverse_kl":
        return kl(q, (1 - alpha) * p + alpha * q)
    if kind == "tvd":
        return 0.5 * (p - q).abs().sum(-1)
    if kind == "argmax_ce":  # the teacher's top class as a one-hot target
        return -q.log().gather(-1, p.argmax(-1, keepdim=True)).squeeze(-1)
    raise ValueError(kind)

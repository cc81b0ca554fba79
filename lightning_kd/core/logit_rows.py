"""Which rows of a token-level (MLM) head's logits a step computes, and how to read compact rows.

An MLM head projects every position onto the vocabulary (``(B, N, d) → (B, N, V)``, 30,522 wide for
BERT), yet most readers only look at some positions: the hard MLM loss, masked-token accuracy and
KD's default soft term read the labelled (masked) positions, about 15 % of them. A request names
the rows it needs with a :data:`LogitRows` kind; :func:`row_mask` turns that kind into the ``(B, N)``
positions of one batch, and a model then projects only those rows (:mod:`lightning_kd.core.compact_head`).

Compact logits are ``(R, V)``: the rows of the ``(B, N)`` row mask in row-major order (the order of
``mask.nonzero()``). :func:`rows_at` reads any subset of them; :func:`sum_per_example` and
:func:`mean_per_example` reduce per-row values per example, which multi-teacher strategies need.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

#: ``"none"``: no row (no vocabulary projection at all); ``"labelled"``: positions with an MLM label
#: (``labels != -100``); ``"tokens"``: real (non-padding) tokens and labelled positions; ``"all"``:
#: every position, computed by the model's own forward as without compact heads.
LogitRows = Literal["none", "labelled", "tokens", "all"]
#: Each kind covers the rows of every kind before it.
ROW_ORDER: tuple[str, ...] = ("none", "labelled", "tokens", "all")
IGNORE_INDEX = -100


def widest(*kinds: LogitRows) -> LogitRows:
    """The narrowest kind covering every one of ``kinds`` (``"none"`` for no kind)."""
    for kind in kinds:
        if kind not in ROW_ORDER:
            raise ValueError(f"Unknown logit rows {kind!r}; choose from {list(ROW_ORDER)}.")
    return max(kinds, key=ROW_ORDER.index, default="none")


def row_mask(batch: dict[str, Tensor], kind: LogitRows) -> Tensor | None:
    """The ``(B, N)`` bool positions ``kind`` covers in ``batch``, or ``None`` for every position (``"all"``).

    The fallbacks mirror the loss masks (:meth:`~lightning_kd.losses.prediction.PredictionLoss.soft_mask`),
    so a loss's mask always lies inside its rows: ``"labelled"`` without token-level labels is every
    real token; without an attention mask every position is real.
    """
    if kind == "all":
        return None
    ids = batch["input_ids"] if "input_ids" in batch else batch["inputs_embeds"]
    if kind == "none":
        return torch.zeros(ids.shape[:2], dtype=torch.bool, device=ids.device)
    mask = batch.get("attention_mask")
    real = mask.bool() if mask is not None else torch.ones(ids.shape[:2], dtype=torch.bool, device=ids.device)
    labels = batch.get("labels")
    labelled = labels.ne(IGNORE_INDEX) if labels is not None and labels.dim() == 2 else None
    if kind == "labelled":
        return labelled if labelled is not None else real
    if kind == "tokens":
        return real | labelled if labelled is not None else real
    raise ValueError(f"Unknown logit rows {kind!r}; choose from {list(ROW_ORDER)}.")


def rows_at(logits: Tensor, rows: Tensor | None, mask: Tensor | None) -> Tensor:
    """The ``(R', V)`` logits at the positions of ``mask`` (``None``: every position), in row-major order.

    Args:
        logits: compact ``(R, V)`` logits at the positions of ``rows``, or full ``(B, N, V)`` logits (``rows`` ``None``).
        rows: the ``(B, N)`` positions of compact ``logits``; ``None`` for full logits.
        mask: the positions wanted; they must lie inside ``rows``.

    Raises:
        ValueError: ``mask`` asks for positions whose logits were not computed.
    """
    if rows is None:
        if mask is None:
            return logits.reshape(-1, logits.shape[-1])
        return logits[mask.bool()]
    if mask is None:
        mask = torch.ones_like(rows)
    mask = mask.bool()
    if mask.shape != rows.shape:
        raise ValueError(f"A (B, N) position mask of shape {tuple(mask.shape)} does not fit logit rows of shape {tuple(rows.shape)}.")
    if torch.equal(mask, rows):
        return logits  # the common case (e.g. KD's soft term on the labelled rows): no copy
    if bool((mask & ~rows).any()):
        raise ValueError(
            f"A loss reads logits at {int((mask & ~rows).sum())} positions whose vocabulary rows were not computed "
            "(compact heads compute only the rows the method's requests name). The method must name these rows in "
            "student_logit_rows / teacher_logit_rows; set `method.compact_heads = False` to compute every row."
        )
    return logits[mask[rows]]


def example_of_rows(positions: Tensor) -> Tensor:
    """``(R,)`` example (batch row) index of each row of compact logits at ``positions`` ``(B, N)``."""
    return positions.nonzero()[:, 0]


def sum_per_example(values: Tensor, positions: Tensor) -> Tensor:
    """``(B, …)`` sums of the per-row ``values`` ``(R, …)`` over each example's rows (0 for an example without one)."""
    out = values.new_zeros((positions.shape[0], *values.shape[1:]))
    return out.index_add(0, example_of_rows(positions), values)


def mean_per_example(values: Tensor, positions: Tensor) -> Tensor:
    """``(B, …)`` means of the per-row ``values`` ``(R, …)`` over each example's rows (0 for an example without one)."""
    counts = positions.sum(dim=1).clamp_min(1).to(values.dtype)
    return sum_per_example(values, positions) / counts.view(-1, *([1] * (values.dim() - 1)))

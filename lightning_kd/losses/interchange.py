"""DIITO's interchange intervention: which positions are swapped and how a swap is applied.

Shapes: ``B`` examples, ``N`` positions, ``D`` width. Example ``b``'s *source* is example
``(b + 1) mod B`` (a cyclic shift of the batch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

InterchangeWay = Literal["consecutive", "random"]


@dataclass
class Interchange:
    """Flat index lists of one batch's swap: base ``(rows[k], columns[k])`` receives source
    ``(source_rows[k], source_columns[k])``. Each is a ``(K,)`` long tensor."""

    rows: Tensor
    columns: Tensor
    source_rows: Tensor
    source_columns: Tensor


def interchange_counts(lengths: Tensor, proportion: float, max_tokens: int | None = None) -> Tensor:
    """Tokens swapped per example: ``⌊min(len_b, len_{b+1})·p⌋``, capped at ``max_tokens``. ``(B,)``."""
    shortest = torch.minimum(lengths, lengths.roll(-1))
    counts = torch.floor(shortest.double() * proportion).long()
    return counts.clamp_max(max_tokens) if max_tokens is not None else counts


def sample_interchange(
    attention_mask: Tensor,
    proportion: float,
    way: InterchangeWay = "consecutive",
    max_tokens: int | None = None,
    generator: torch.Generator | None = None,
) -> Interchange:
    """Draw the swapped positions of a batch.

    Args:
        attention_mask: ``(B, N)`` 1 for real tokens (real tokens are assumed to come first).
        proportion: fraction ``p`` of the shorter of the two examples' lengths that is swapped.
        way: ``"consecutive"``: a block of ``c`` positions starting uniformly in ``[0, len_b − c]`` in
            the base and, independently, in ``[0, len_{b+1} − c]`` in the source; ``"random"``: ``c``
            positions drawn without replacement from the whole padded length in each (padding may be
            picked, as the reference).
        max_tokens: cap on ``c`` (``None``: no cap).
        generator: random source (CPU).
    """
    batch, length = attention_mask.shape
    lengths = attention_mask.long().sum(dim=1).cpu()
    counts = interchange_counts(lengths, proportion, max_tokens)
    rows, columns, source_rows, source_columns = [], [], [], []
    for b in range(batch):
        count, source = int(counts[b]), (b + 1) % batch
        if count == 0:
            continue
        if way == "consecutive":
            start = int(torch.randint(0, int(lengths[b]) - count + 1, (1,), generator=generator))
            source_start = int(torch.randint(0, int(lengths[source]) - count + 1, (1,), generator=generator))
            base_positions = torch.arange(start, start + count)
            source_positions = torch.arange(source_start, source_start + count)
        elif way == "random":
            base_positions = torch.randperm(length, generator=generator)[:count]
            source_positions = torch.randperm(length, generator=generator)[:count]
        else:
            raise ValueError(f"Unknown interchange way {way!r}; use 'consecutive' or 'random'.")
        rows.append(torch.full((count,), b))
        source_rows.append(torch.full((count,), source))
        columns.append(base_positions)
        source_columns.append(source_positions)
    device = attention_mask.device
    empty = torch.zeros(0, dtype=torch.long)
    cat = lambda parts: (torch.cat(parts) if parts else empty).to(device)
    return Interchange(cat(rows), cat(columns), cat(source_rows), cat(source_columns))


def source_values(hidden: Tensor, swap: Interchange) -> Tensor:
    """The source activations ``hidden[source_rows, source_columns]``, ``(K, D)`` (graph kept)."""
    return hidden[swap.source_rows, swap.source_columns]


def apply_interchange(hidden: Tensor, swap: Interchange, values: Tensor) -> Tensor:
    """``hidden`` with ``values`` written at the base positions ``(rows, columns)``; other positions unchanged.

    Out of place, so gradients reach both ``hidden`` (unswapped positions) and ``values``.
    """
    return hidden.index_put((swap.rows, swap.columns), values.to(hidden.dtype))


def cosine_rows(student: Tensor, teacher: Tensor, mask: Tensor | None, parity: bool) -> Tensor:
    """``1 − cos`` between ``(B, N, D)`` rows, averaged.

    Args:
        mask: ``(B, N)`` mask of the rows that count (real tokens); ``None``: every row.
        parity: GKD form: padding rows are zeroed before the cosine, so each contributes ``1`` and
            the mean runs over all ``B·N`` rows; otherwise the mean over real tokens only.
    """
    cos = torch.nn.functional.cosine_similarity(student.float(), teacher.float(), dim=-1, eps=1e-8)
    keep = mask.bool() if mask is not None else torch.ones_like(cos, dtype=torch.bool)
    if parity:
        return torch.where(keep, 1.0 - cos, torch.ones_like(cos)).mean()
    return ((1.0 - cos) * keep).sum() / keep.sum().clamp_min(1)


def layer_draw(step: int, student_layers: int, seed: int = 0) -> int:
    """The student layer ``ℓ ∈ 1…L_S`` of ``alignment="full"`` for an optimizer step (same on every rank
    and for every micro-batch of the step)."""
    generator = torch.Generator().manual_seed((seed * 1_000_003 + step) % (2**63))
    return int(torch.randint(1, student_layers + 1, (1,), generator=generator))


def teacher_block(student_layer: int, teacher_layers: int, student_layers: int) -> list[int]:
    """Teacher hidden-state indices aligned with student layer ``ℓ``: ``(ℓ−1)r+1 … ℓr`` with ``r = L_T/L_S``."""
    ratio = teacher_layers // student_layers
    return list(range((student_layer - 1) * ratio + 1, student_layer * ratio + 1))



"""Which token positions per-token intermediate terms average over.

Prediction terms score the positions that have a label. Intermediate terms (hidden states, attention
rows, relations, cosines) are defined at every token; which of them count is a choice of the stage:

* ``"all_tokens"`` — every real (non-padding) token: the encoder stages' rule, and GKD's;
* ``"scored"`` — the positions the prediction terms score: in the causal-LM stage the prompt and
  padding are then left out of every term alike (the positions whose next token is scored).

A method reads the positions with :func:`term_positions` where it used to read the attention mask as
a position mask; the attention mask itself still tells the models and the key masks which tokens are
real. In the causal-LM stage attention terms always carry the model's causal key mask, so the
positions only choose query rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from torch import Tensor

from lightning_kd.stages.base import IGNORE_INDEX

if TYPE_CHECKING:
    from lightning_kd.stages.base import Stage

IntermediatePositions = Literal["auto", "scored", "all_tokens"]
#: Batch key of the ``(B, N)`` positions intermediate terms read, set by :func:`with_term_positions`.
TERM_POSITIONS = "term_positions"


def resolve_positions(stage: Stage, choice: IntermediatePositions) -> str:
    """``choice`` for ``stage``: ``"auto"`` becomes the stage's default.

    Raises:
        ValueError: a choice the stage does not offer.
    """
    offered = stage.intermediate_positions
    if choice == "auto":
        return offered[0]
    if choice not in offered:
        raise ValueError(
            f"intermediate_positions={choice!r} does not apply to {stage.description}, whose intermediate terms "
            f"read {' or '.join(repr(o) for o in offered)}; remove it."
        )
    return choice


def with_term_positions(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """``batch`` with :data:`TERM_POSITIONS` = its scored positions (labels aligned by the stage, not
    ``-100``), when it has token labels; unchanged otherwise (every real token then counts)."""
    labels = batch.get("labels")
    if labels is None or labels.dim() != 2 or TERM_POSITIONS in batch:
        return batch
    return {**batch, TERM_POSITIONS: labels.ne(IGNORE_INDEX)}


def term_positions(batch: dict[str, Tensor]) -> Tensor | None:
    """The ``(B, N)`` positions per-token intermediate terms average over: the scored positions when
    the method chose them, else the attention mask (``None``: every position is real)."""
    positions = batch.get(TERM_POSITIONS)
    return positions if positions is not None else batch.get("attention_mask")

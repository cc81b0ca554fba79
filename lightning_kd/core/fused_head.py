"""Capture the rows entering a model's vocabulary projection instead of its logits (fused heads).

A causal LM's vocabulary is 49k–262k wide; its logits at every scored position, with their
log-softmaxes and gradient, are the largest tensors of a distillation step (and an MLM method reading
every token's 30k-wide row is not far behind). When the only readers of those logits are the
prediction terms (the soft divergences and the token loss; see
:meth:`~lightning_kd.core.method_hooks.MethodHooks.fused_heads`), the model's forward runs as usual
but its vocabulary projection (``get_output_embeddings()``: a decoder's ``lm_head``, an MLM head's
decoder after its transform) does not project: :func:`rows_entering` records the ``(R, d)`` rows it
receives at the compact rows (:mod:`lightning_kd.core.compact_head`) and returns an empty
``(R, 0)`` tensor. The terms then project those rows a chunk at a time through the head's own
weights (:mod:`lightning_kd.losses.fused_linear`), so no ``(R, V)`` tensor ever exists.

:class:`HeadRows` is what :class:`~lightning_kd.core.features.Features` carries instead of logits;
the next-token loss is computed from it on first use (:func:`model_loss`), or together with the soft
term in one pass when the prediction loss asks for both (see
:meth:`~lightning_kd.losses.prediction.PredictionLoss.soft_features`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import Tensor, nn

from lightning_kd.losses.fused_linear import HardSpec, LinearHead, fused_linear_terms

if TYPE_CHECKING:
    from lightning_kd.core.features import Features


@dataclass
class HeadRows:
    """The hidden rows that entered a model's LM head, and the head.

    Attributes:
        rows: ``(R, d)`` rows at the compact logit positions (row-major order of ``Features.logit_rows``),
            with their graph for a student.
        head: the model's head (its live weight and bias, and the family's post-transform).
        labels: ``(R,)`` labels at those rows (aligned by the stage, ``-100`` where not scored), when the
            model's own loss was asked for; else ``None``.
    """

    rows: Tensor
    head: LinearHead
    labels: Tensor | None = None


def linear_head(model: nn.Module) -> LinearHead | None:
    """``model``'s LM head as a :class:`LinearHead`, or ``None`` for a family whose post-head transform is
    not verified (its logits are then computed by the model, as without fused heads)."""
    try:
        return LinearHead.of(model)
    except ValueError:
        return None


@contextmanager
def rows_entering(head: nn.Module) -> Iterator[list[Tensor]]:
    """While active, ``head`` records its input (after any pre-hook) into the yielded list and returns an
    empty ``(…, 0)`` tensor instead of projecting it."""
    seen: list[Tensor] = []

    def record(hidden: Tensor, *args, **kwargs) -> Tensor:
        seen.append(hidden)
        return hidden.new_empty((*hidden.shape[:-1], 0))

    head.forward = record  # an instance attribute: nn.Module.__call__ (and its pre-hooks) still run
    try:
        yield seen
    finally:
        del head.forward


def with_logits(features: Features) -> Features:
    """``features`` with its logits projected from its head rows (a model whose family kept its own logits
    is compared with one that kept head rows); features that have logits are returned as they are."""
    if features.head_rows is None:
        return features
    head_rows = features.head_rows
    return dataclasses.replace(features, logits=head_rows.head.project(head_rows.rows), head_rows=None)


def model_loss(features: Features) -> Tensor | None:
    """The model's own loss: ``features.loss``, or, for features holding head rows with labels, the mean
    next-token cross-entropy over the labelled rows, computed now (chunk by chunk) and kept."""
    if features.loss is None and features.head_rows is not None and features.head_rows.labels is not None:
        head_rows = features.head_rows
        features.loss = fused_linear_terms(head_rows.rows, head_rows.head, hard=HardSpec.mean(head_rows.labels))["hard"]
    return features.loss

"""Run a model's own vocabulary head on some positions only (compact heads), and keep labels out of
a model's own loss.

The model's forward runs unchanged (its pre-hooks, hidden states, attention capture, everything), but
a forward pre-hook on the first module of its vocabulary head (the stage's
:meth:`~lightning_kd.stages.base.Stage.head_entry`: an MLM transform's first module, a decoder LM's
``lm_head``) hands that module the hidden states at the chosen rows only, ``(R, d)`` instead of
``(B, N, d)``. Everything after it (transform, the decoder tied to the input embeddings, the bias,
soft-capping) is the model's own code on its own live modules, so gradients reach the student's head
and its ties hold; the output is ``(R, V)`` logits.

Labels never reach the model's own loss when it would expect ``(B, N, V)`` logits (compact rows) or
would shift them again (a causal LM's prepared labels): the last forward pre-hook of the model takes
them out of the call (:func:`labels_taken`), after the model's other pre-hooks have seen them, and the
stage's :meth:`~lightning_kd.stages.base.Stage.token_loss` computes the same mean cross-entropy from
the logits.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from torch import Tensor, nn


#: ``LIGHTNING_KD_COMPACT_HEADS=0`` turns compact heads off for every method that is not told otherwise
#: (e.g. a CLI run being debugged); ``1`` or unset: on.
ENVIRONMENT = "LIGHTNING_KD_COMPACT_HEADS"


def compact_heads_default() -> bool:
    """Whether compact heads are on when a method does not say (:data:`ENVIRONMENT`).

    Raises:
        ValueError: the variable holds something other than ``0`` or ``1``.
    """
    value = os.environ.get(ENVIRONMENT, "1").strip()
    if value not in ("0", "1"):
        raise ValueError(f"{ENVIRONMENT} must be 1 (compact heads, the default) or 0 (every logit row), got {value!r}.")
    return value == "1"


@dataclass
class HeadCall:
    """What one compact forward saw: how often the head's first module ran, and the labels taken out."""

    calls: int = 0
    labels: Tensor | None = None


@contextmanager
def labels_taken(model: nn.Module, seen: HeadCall) -> Iterator[HeadCall]:
    """While active, ``labels`` given to ``model``'s forward are taken out of the call (into ``seen.labels``)
    by a pre-hook that runs after the model's other pre-hooks."""

    def take_labels(_module: nn.Module, args: tuple, kwargs: dict):
        seen.labels = kwargs.pop("labels", None)
        return args, kwargs

    handle = model.register_forward_pre_hook(take_labels, with_kwargs=True)
    try:
        yield seen
    finally:
        handle.remove()


@contextmanager
def compact_head(model: nn.Module, entry: nn.Module, rows: Tensor) -> Iterator[HeadCall]:
    """While active, ``model``'s forward projects only the hidden states at ``rows`` (``(B, N)`` bool)
    and keeps labels out of its own loss (see the module docstring)."""
    seen = HeadCall()

    def select(_module: nn.Module, args: tuple, kwargs: dict):
        seen.calls += 1
        if args:
            hidden = args[0]
            return (hidden[rows.to(hidden.device)], *args[1:]), kwargs
        name = next(k for k, v in kwargs.items() if isinstance(v, Tensor))  # a head called by keyword
        return args, {**kwargs, name: kwargs[name][rows.to(kwargs[name].device)]}

    handle = entry.register_forward_pre_hook(select, with_kwargs=True)
    try:
        with labels_taken(model, seen):
            yield seen
    finally:
        handle.remove()


def check_compact_output(model: nn.Module, seen: HeadCall, logits: Tensor, count: int) -> None:
    """Refuse a forward in which the head's first module did not run exactly once on the rows.

    Raises:
        RuntimeError: the family's forward differs from the layout lightning_kd knows.
    """
    if seen.calls != 1 or logits.dim() != 2 or logits.shape[0] != count:
        raise RuntimeError(
            f"Compact heads expected {type(model).__name__}'s vocabulary head to run once on {count} rows, but it ran "
            f"{seen.calls} time(s) and returned logits of shape {tuple(logits.shape)}: this transformers version lays "
            "the head out differently. Set `method.compact_heads = False` (every row computed by the model's forward)."
        )

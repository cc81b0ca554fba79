"""Run an MLM model's own vocabulary head on some positions only (compact heads).

The model's forward runs unchanged (its pre-hooks, hidden states, attention capture, everything), but
a forward pre-hook on the first module of its MLM head (found per family by
:func:`lightning_kd.models.vocab_head.head_layout`) hands that module the hidden states at the chosen
rows only, ``(R, d)`` instead of ``(B, N, d)``. Everything after it (transform, the decoder tied to the
input embeddings, the bias) is the model's own code on its own live modules, so gradients reach the
student's head and its ties hold; the output is ``(R, V)`` logits.

Labels never reach the model's own loss (which would expect ``(B, N, V)`` logits): the last forward
pre-hook of the model takes them out of the call, after the model's other pre-hooks have seen them
(VocabDistil's maps MLM labels to the student's rows), and :func:`masked_lm_loss` computes the same
mean cross-entropy over labelled positions from the compact rows.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from lightning_kd.core.logit_rows import IGNORE_INDEX
from lightning_kd.models.vocab_head import head_layout


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


#: model_type → the head's first module, for MLM families whose head vocab_head.py cannot copy (so it
#: has no layout there) but whose forward calls it on the encoder's output: MobileBERT's decoder
#: multiplies by its embeddings and an extra dense weight, side by side.
_ENTRIES = {"mobilebert": "cls.predictions.transform"}


def head_entry(model: nn.Module) -> nn.Module | None:
    """The first module of ``model``'s MLM head (the one its forward calls on the encoder's output), or
    ``None`` when ``model`` is not a ``…ForMaskedLM`` of a family whose head lightning_kd knows.

    Models without one compute every row through their own forward (same values, no saving).
    """
    if not type(model).__name__.endswith("ForMaskedLM"):
        return None  # classifiers, bare encoders, …ForPreTraining (other outputs): their logits stay whole
    config = getattr(model, "config", None)
    layout = head_layout(config)
    if layout is not None and layout.kind == "masked_lm" and layout.transform:
        path = layout.transform[0]
    else:
        path = _ENTRIES.get(getattr(config, "model_type", None))
    if path is None:
        return None
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


@dataclass
class HeadCall:
    """What one compact forward saw: how often the head's first module ran, and the labels taken out."""

    calls: int = 0
    labels: Tensor | None = None


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

    def take_labels(_module: nn.Module, args: tuple, kwargs: dict):
        seen.labels = kwargs.pop("labels", None)
        return args, kwargs

    handles = [entry.register_forward_pre_hook(select, with_kwargs=True), model.register_forward_pre_hook(take_labels, with_kwargs=True)]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def check_compact_output(model: nn.Module, seen: HeadCall, logits: Tensor, count: int) -> None:
    """Refuse a forward in which the head's first module did not run exactly once on the rows.

    Raises:
        RuntimeError: the family's forward differs from the layout lightning_kd knows.
    """
    if seen.calls != 1 or logits.dim() != 2 or logits.shape[0] != count:
        raise RuntimeError(
            f"Compact heads expected {type(model).__name__}'s MLM head to run once on {count} rows, but it ran "
            f"{seen.calls} time(s) and returned logits of shape {tuple(logits.shape)}: this transformers version lays "
            "the head out differently. Set `method.compact_heads = False` (every row computed by the model's forward)."
        )


def masked_lm_loss(logits: Tensor, labels: Tensor, rows: Tensor) -> Tensor:
    """The mean cross-entropy over labelled positions from compact ``(R, V)`` logits at ``rows`` — the
    value of an HF MLM head's own loss (float32 math, ``-100`` ignored; NaN without any label, as HF).

    Raises:
        ValueError: a labelled position lies outside ``rows``.
    """
    labels = labels.to(rows.device)
    outside = labels.ne(IGNORE_INDEX) & ~rows
    if bool(outside.any()):
        raise ValueError(
            f"{int(outside.sum())} labelled positions lie outside the computed logit rows, so the MLM loss cannot be "
            "computed from them; the student's rows must cover the labelled positions."
        )
    targets = labels[rows]
    keep = targets.ne(IGNORE_INDEX)
    if not bool(keep.all()):  # e.g. every real token's row: score the labelled ones only (no wasted softmax)
        logits, targets = logits[keep], targets[keep]
    return F.cross_entropy(logits.float(), targets)

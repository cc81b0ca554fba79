"""Batches for the tiny family models of :mod:`tests.families`: the keys each family's forward takes."""

from __future__ import annotations

import inspect

from torch import Tensor, nn

from tests.conftest import make_batch


def family_batch(model: nn.Module, kind: str = "classification", labels: bool = True) -> dict[str, Tensor]:
    """``make_batch(kind)`` (padded rows, pad id 0) keeping only what ``model.forward`` accepts.

    Llama/Qwen2/ModernBERT/DistilBERT take no ``token_type_ids``; ``labels=False`` drops the labels.
    """
    accepted = inspect.signature(model.forward).parameters
    return {k: v for k, v in make_batch(kind).items() if k in accepted and (labels or k != "labels")}

"""Token accuracy, the metric of the token-level stages (each stage's fallback metrics: :mod:`lightning_kd.stages`)."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


class MaskedTokenAccuracy(Metric):
    """Accuracy of the argmax prediction at positions whose label is not ``ignore_index``."""

    # ``update`` only adds counts: ``forward`` need not re-run it on the accumulated state, and
    # ``merge_state`` (summing the counts, like the DDP reduction) applies.
    full_state_update = False
    higher_is_better = True

    def __init__(self, ignore_index: int = -100) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.add_state("correct", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, logits: Tensor, labels: Tensor) -> None:
        keep = labels.ne(self.ignore_index)
        self.correct += (logits.argmax(-1).eq(labels) & keep).sum()
        self.total += keep.sum()

    def compute(self) -> Tensor:
        return self.correct / self.total.clamp_min(1)

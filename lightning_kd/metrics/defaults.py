"""Fallback metrics when no data module provides the task's own (e.g. plain dataloaders in a notebook)."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy


class MaskedTokenAccuracy(Metric):
    """Accuracy of the argmax prediction at positions whose label is not ``ignore_index``."""

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


def default_metrics(task_head: str, num_labels: int | None, prefix: str) -> MetricCollection | None:
    """Accuracy for classification, masked-token accuracy for MLM, nothing for regression."""
    if task_head == "masked_lm":
        return MetricCollection({"mlm_accuracy": MaskedTokenAccuracy()}, prefix=prefix)
    if num_labels and num_labels > 1:
        return MetricCollection({"accuracy": MulticlassAccuracy(num_classes=num_labels, average="micro")}, prefix=prefix)
    return None

"""The fine-tuning stage: one prediction per example from a sequence-classification head."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_kd.stages.base import IGNORE_INDEX, Stage


def unlabelled_rows(labels: Tensor) -> Tensor:
    """``(B,)`` bool: the examples whose class id is ``-100`` (:data:`IGNORE_INDEX`), i.e. rows without a
    label (unlabelled transfer data, :mod:`lightning_kd.data.unlabelled`). Floating-point labels
    (regression scores) have no such value: no row is unlabelled."""
    if labels.is_floating_point():
        return torch.zeros_like(labels, dtype=torch.bool)
    return labels.eq(IGNORE_INDEX)


class SequenceClassification(Stage):
    """Task logits ``(B, C)`` (``C = 1``: regression) against one label per example; the model's
    own task loss is the hard loss.

    A batch with unlabelled rows (class id ``-100``) keeps its labels out of the model's forward and the
    hard loss is the mean cross-entropy over its labelled rows, computed here: Hugging Face's loss
    ignores ``-100`` too but returns NaN when no row is labelled, where this returns an exact 0 with a
    zero gradient. A fully labelled batch goes to the model's own loss as before (same value).
    """

    name: ClassVar[str] = "sequence_classification"
    class_suffixes: ClassVar[tuple[str, ...]] = ("ForSequenceClassification",)
    description: ClassVar[str] = "fine-tuning (sequence classification)"

    def auto_class(self):
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification

    def teacher_hint(self) -> str:
        return "fine-tune it on the task first (e.g. configs/quickstart/1_finetune_teacher.yaml) and use the export"

    def labels_reach_model(self, labels: Tensor) -> bool:
        return self.labels_to_model and not bool(unlabelled_rows(labels).any())

    def loss_from_logits(self, logits: Tensor, labels: Tensor, rows: Tensor | None = None) -> Tensor:
        """The mean cross-entropy over the labelled rows, float32; 0 (zero gradient) when none is labelled.

        Raises:
            ValueError: a regression head (one output), whose scores cannot be unlabelled.
        """
        if logits.shape[-1] == 1:
            raise ValueError(
                "Unlabelled rows (label -100) apply to classification; this model has a regression head (one output). "
                "Give every regression example its score."
            )
        labels = labels.to(logits.device)
        keep = ~unlabelled_rows(labels)
        # A sum over the kept rows (empty: an exact 0 still in the graph, so backward runs) over their count.
        total = F.cross_entropy(logits[keep].float(), labels[keep], reduction="sum")
        return total / keep.sum().clamp_min(1)

    def metrics(self, num_labels, prefix):
        if not num_labels or num_labels < 2:
            return None  # regression: the data module's task table names its metrics
        from torchmetrics import MetricCollection
        from torchmetrics.classification import MulticlassAccuracy

        return MetricCollection({"accuracy": MulticlassAccuracy(num_classes=num_labels, average="micro")}, prefix=prefix)

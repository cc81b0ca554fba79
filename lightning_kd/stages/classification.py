"""The fine-tuning stage: one prediction per example from a sequence-classification head."""

from __future__ import annotations

from typing import ClassVar

from lightning_kd.stages.base import Stage


class SequenceClassification(Stage):
    """Task logits ``(B, C)`` (``C = 1``: regression) against one label per example; the model's
    own task loss is the hard loss."""

    name: ClassVar[str] = "sequence_classification"
    class_suffixes: ClassVar[tuple[str, ...]] = ("ForSequenceClassification",)
    description: ClassVar[str] = "fine-tuning (sequence classification)"

    def auto_class(self):
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification

    def teacher_hint(self) -> str:
        return "fine-tune it on the task first (e.g. configs/quickstart/1_finetune_teacher.yaml) and use the export"

    def metrics(self, num_labels, prefix):
        if not num_labels or num_labels < 2:
            return None  # regression: the data module's task table names its metrics
        from torchmetrics import MetricCollection
        from torchmetrics.classification import MulticlassAccuracy

        return MetricCollection({"accuracy": MulticlassAccuracy(num_classes=num_labels, average="micro")}, prefix=prefix)

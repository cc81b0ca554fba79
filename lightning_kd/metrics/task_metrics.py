"""Task metrics as ``torchmetrics`` collections that take raw model outputs.

``build_task_metrics(spec, prefix)`` returns a :class:`~torchmetrics.MetricCollection` to be
called as ``metrics.update(logits, labels)``: ``logits`` of shape ``(B, C)`` for classification
(class ids of shape ``(B,)`` are accepted too) or ``(B, 1)`` / ``(B,)`` for regression. Each metric
is wrapped in :class:`FromLogits`, which turns logits into what that metric expects, so callers
never argmax themselves.

Metric names follow the task table: ``accuracy``; ``f1`` (binary F1 of class 1 for two classes,
macro F1 otherwise, as SuperGLUE scores CB); ``matthews``; ``pearson``; ``spearman``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor
from torchmetrics import Metric, MetricCollection, PearsonCorrCoef, SpearmanCorrCoef
from torchmetrics.classification import (
    BinaryF1Score,
    BinaryMatthewsCorrCoef,
    MulticlassAccuracy,
    MulticlassF1Score,
    MulticlassMatthewsCorrCoef,
)
from torchmetrics.wrappers.transformations import MetricInputTransformer

from lightning_kd.metrics.defaults import MaskedTokenAccuracy

if TYPE_CHECKING:
    from lightning_kd.data.tasks import TaskSpec


class FromLogits(MetricInputTransformer):
    """Converts model outputs before they reach ``metric``.

    Args:
        metric: the wrapped metric.
        regression: ``(B, 1)`` scores are squeezed to ``(B,)``; otherwise ``(B, C)`` logits become
            class ids by argmax. Inputs already in the target's shape pass through unchanged.
    """

    def __init__(self, metric: Metric, regression: bool = False) -> None:
        super().__init__(metric)
        self.regression = regression

    def transform_pred(self, pred: Tensor) -> Tensor:
        """Logits → class ids (classification) or scores of shape ``(B,)`` (regression)."""
        if self.regression:
            return pred.squeeze(-1).float() if pred.ndim == 2 and pred.shape[-1] == 1 else pred.float()
        return pred.argmax(dim=-1) if pred.is_floating_point() else pred

    def transform_target(self, target: Tensor) -> Tensor:
        """Regression targets as float (labels may arrive as float64 from user code)."""
        return target.float() if self.regression else target


def _metric(name: str, num_labels: int) -> Metric:
    if name == "pearson":
        return FromLogits(PearsonCorrCoef(), regression=True)
    if name == "spearman":
        return FromLogits(SpearmanCorrCoef(), regression=True)
    if num_labels < 2:
        raise ValueError(f"metric {name!r} needs a classification task (num_labels >= 2), got {num_labels}")
    if name == "accuracy":
        return FromLogits(MulticlassAccuracy(num_classes=num_labels, average="micro"))
    if name == "f1":
        if num_labels == 2:
            return FromLogits(BinaryF1Score())
        return FromLogits(MulticlassF1Score(num_classes=num_labels, average="macro"))
    if name == "matthews":
        if num_labels == 2:
            return FromLogits(BinaryMatthewsCorrCoef())
        return FromLogits(MulticlassMatthewsCorrCoef(num_classes=num_labels))
    raise ValueError(f"unknown metric {name!r}; expected accuracy, f1, matthews, pearson or spearman")


def build_task_metrics(spec: TaskSpec, prefix: str = "", num_labels: int | None = None) -> MetricCollection:
    """The metrics of ``spec``, keyed ``<prefix><metric>`` (e.g. ``"val/accuracy"``).

    Args:
        spec: the task (its ``metrics`` and ``num_labels``).
        prefix: prepended to every key, e.g. ``"val/"``.
        num_labels: class count for tasks whose data decides it (``text-classification``).

    Raises:
        ValueError: the class count is unknown, or the task names an unknown metric.
    """
    labels = spec.num_labels if spec.num_labels is not None else num_labels
    if labels is None:
        raise ValueError(f"task {spec.name!r} gets its class count from the data; pass num_labels")
    # compute_groups=False: the wrapped metrics do not share state, so grouping would only add checks.
    return MetricCollection({name: _metric(name, labels) for name in spec.metrics}, prefix=prefix, compute_groups=False)


def build_mlm_metrics(prefix: str = "") -> MetricCollection:
    """Masked-token accuracy keyed ``<prefix>mlm_accuracy``; ``update(logits (B, N, V), labels (B, N))``.

    Positions labelled -100 (not masked) are ignored. The metric class lives in
    :mod:`lightning_kd.metrics.defaults`, which the training module also falls back to.
    """
    return MetricCollection({"mlm_accuracy": MaskedTokenAccuracy(ignore_index=-100)}, prefix=prefix)

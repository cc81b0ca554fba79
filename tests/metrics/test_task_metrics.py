"""Task metrics against written-out formulas, from logits or class ids."""

from __future__ import annotations

import pytest
import torch

from lightning_kd.data import get_task
from lightning_kd.metrics import build_mlm_metrics, build_task_metrics

LOGITS = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0], [0.0, 1.0], [0.5, 0.2], [0.1, 0.9]])
TARGET = torch.tensor([0, 1, 1, 1, 0, 0])
# argmax → [0, 1, 0, 1, 0, 1]: tp = 2, tn = 2, fp = 1, fn = 1


def test_binary_accuracy_f1_and_matthews() -> None:
    tp, tn, fp, fn = 2, 2, 1, 1
    f1 = 2 * tp / (2 * tp + fp + fn)
    mcc = (tp * tn - fp * fn) / ((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)) ** 0.5
    mrpc = build_task_metrics(get_task("mrpc"), "val/")
    mrpc.update(LOGITS, TARGET)
    cola = build_task_metrics(get_task("cola"), "test/")
    cola.update(LOGITS.argmax(-1), TARGET)  # class ids are accepted as well as logits
    assert mrpc.compute() == pytest.approx({"val/accuracy": 4 / 6, "val/f1": f1})
    assert cola.compute() == pytest.approx({"test/accuracy": 4 / 6, "test/matthews": mcc})


def test_multiclass_f1_is_macro() -> None:
    logits = torch.eye(3)[[0, 1, 2, 0, 0, 2]]
    target = torch.tensor([0, 1, 2, 1, 0, 2])
    per_class = [2 * 2 / (2 * 2 + 1 + 0), 2 * 1 / (2 * 1 + 0 + 1), 1.0]
    metrics = build_task_metrics(get_task("cb"), "")
    metrics.update(logits, target)
    assert metrics.compute() == pytest.approx({"accuracy": 5 / 6, "f1": sum(per_class) / 3})


def test_regression_correlations_from_one_column_logits() -> None:
    preds = torch.tensor([[0.1], [0.4], [0.35], [0.8]])
    target = torch.tensor([0.0, 2.0, 1.0, 5.0])
    x, y = preds.squeeze(-1), target
    pearson = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()).norm() * (y - y.mean()).norm())
    metrics = build_task_metrics(get_task("stsb"), "val/")
    metrics.update(preds, target)
    result = metrics.compute()
    assert result["val/pearson"] == pytest.approx(float(pearson), abs=1e-6)
    assert result["val/spearman"] == pytest.approx(1.0)  # same ranking


def test_metrics_accumulate_and_reset() -> None:
    metrics = build_task_metrics(get_task("sst2"), "val/")
    metrics.update(LOGITS[:3], TARGET[:3])
    metrics.update(LOGITS[3:], TARGET[3:])
    assert metrics.compute()["val/accuracy"] == pytest.approx(4 / 6)
    metrics.reset()
    metrics.update(LOGITS[:1], TARGET[:1])
    assert metrics.compute()["val/accuracy"] == 1.0


def test_custom_tasks_need_a_class_count() -> None:
    with pytest.raises(ValueError, match="num_labels"):
        build_task_metrics(get_task("text-classification"), "val/")
    assert set(build_task_metrics(get_task("text-classification"), "", num_labels=4).keys()) == {"accuracy", "f1"}


def test_masked_token_accuracy_ignores_unmasked_positions() -> None:
    labels = torch.tensor([[5, -100, 7], [-100, 9, -100]])
    logits = torch.zeros(2, 3, 12)
    logits[0, 0, 5] = logits[0, 2, 1] = logits[1, 1, 9] = 1.0  # right, wrong, right
    logits[0, 1, 3] = 1.0  # an unmasked position: never scored
    metrics = build_mlm_metrics("val/")
    metrics.update(logits, labels)
    assert metrics.compute()["val/mlm_accuracy"] == pytest.approx(2 / 3)

"""Task metrics built on torchmetrics."""

from lightning_kd.metrics.lm import build_lm_metrics
from lightning_kd.metrics.task_metrics import FromLogits, build_mlm_metrics, build_task_metrics

__all__ = ["FromLogits", "build_lm_metrics", "build_mlm_metrics", "build_task_metrics"]

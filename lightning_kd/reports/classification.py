"""Classification report: teacher vs student on a task's test split, quality, size and speed.

``python -m lightning_kd.report`` dispatches here when the exported teacher carries a
sequence-classification head (see :mod:`lightning_kd.report`). Inference speed is the median
over repeated passes of the first test batches, measured in this process on the same batches.
"""

from __future__ import annotations

import statistics
import time

import torch
from transformers import AutoModelForSequenceClassification

from lightning_kd.core.features import model_inputs
from lightning_kd.data import GlueDataModule

TIMED_BATCHES = 8


def evaluate(model, batches, metrics) -> dict[str, float]:
    """Task metrics of ``model`` on ``batches``."""
    metrics.reset()
    with torch.inference_mode():
        for batch in batches:
            metrics.update(model(**model_inputs(batch)).logits.float(), batch["labels"])
    return {k.split("/")[-1]: float(v) for k, v in metrics.compute().items()}


def time_inference(model, batches, repeats: int = 3) -> float:
    """Median seconds per example over ``repeats`` passes through ``batches`` (after a one-batch warm-up)."""
    timings = []
    examples = sum(b["input_ids"].shape[0] for b in batches)
    with torch.inference_mode():
        model(**model_inputs(batches[0]))
        for _ in range(repeats):
            start = time.perf_counter()
            for batch in batches:
                model(**model_inputs(batch))
            timings.append((time.perf_counter() - start) / examples)
    return statistics.median(timings)


def compare(teacher_dir: str, student_dir: str, task: str, tokenizer: str, batch_size: int = 64, max_length: int = 64) -> str:
    """The comparison table as Markdown."""
    data = GlueDataModule(task=task, tokenizer=tokenizer, max_length=max_length, batch_size=batch_size, eval_batch_size=batch_size)
    data.setup("test")
    batches = list(data.test_dataloader())
    timed = batches[:TIMED_BATCHES]  # the same fixed batches for both models keep the timing short
    rows = []
    for name, directory in (("teacher", teacher_dir), ("student", student_dir)):
        model = AutoModelForSequenceClassification.from_pretrained(directory).eval()
        scores = evaluate(model, batches, data.build_metrics("test/"))
        seconds = time_inference(model, timed)
        params = sum(p.numel() for p in model.parameters())
        rows.append((name, model.config.num_hidden_layers, params, scores, seconds))
    metric_names = list(rows[0][3])
    header = "| model | layers | parameters | " + " | ".join(f"test {m}" for m in metric_names) + " | inference ms / example | speed-up |"
    lines = [header, "|" + "---|" * (5 + len(metric_names))]
    for name, layers, params, scores, seconds in rows:
        cells = " | ".join(f"{100 * scores[m]:.2f}" for m in metric_names)
        lines.append(f"| {name} | {layers} | {params / 1e6:.1f} M | {cells} | {1000 * seconds:.2f} | {rows[0][4] / seconds:.2f}× |")
    examples = sum(b["input_ids"].shape[0] for b in batches)
    timed_examples = sum(b["input_ids"].shape[0] for b in timed)
    lines.append("")
    lines.append(
        f"Quality on all {examples} test examples; speed: median of 3 passes over the first {timed_examples}, "
        f"batch {batch_size}, {torch.get_num_threads()} CPU threads."
    )
    return "\n".join(lines)

"""Score one exported model on a task's validation and test splits (run by the leaderboard in a
subprocess of its own after each row's last stage).

Usage::

    python -m benchmarks.leaderboard_eval --model outputs/leaderboard/rotten_tomatoes/KD/seed1/stage1 \
        --task rotten_tomatoes --output eval.json [--data max_length=64] [--max-eval-samples 64]

The model's own directory is its tokenizer (a VocabDistil export carries one that emits its
compressed rows). Writes a JSON object: for each split its task metrics (accuracy, F1, …), the
number of distinct predicted classes and the share of the most predicted one (a student that
answers one class for every example shows 1 and that class's share), the mean probability the
model gives the true label and its mean top-class probability (how much the soft targets differ
from one-hot labels), and for the test split ``correct``, one character per example (``1`` right,
``0`` wrong) for paired comparisons. With ``--train-examples N`` it also scores the seeded subset of
N training examples the rows train on (``train``): for the teacher, what its soft targets look like
on the very examples a student learns from.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification

from lightning_kd.core.features import model_inputs
from lightning_kd.data import GlueDataModule


def score(model, batches, metrics) -> dict:
    """Metrics, the predicted-class histogram's summary and per-example correctness of ``model`` on ``batches``."""
    metrics.reset()
    predictions, labels, label_probability, top_probability = [], [], [], []
    with torch.inference_mode():
        for batch in batches:
            logits = model(**model_inputs(batch)).logits.float()
            metrics.update(logits, batch["labels"])
            probabilities = logits.softmax(dim=-1)
            predictions += logits.argmax(dim=-1).tolist()
            labels += batch["labels"].tolist()
            label_probability += probabilities.gather(-1, batch["labels"][:, None]).squeeze(-1).tolist()
            top_probability += probabilities.max(dim=-1).values.tolist()
    values = {name.split("/")[-1]: float(value) for name, value in metrics.compute().items()}
    counts = Counter(predictions)
    return {
        **values,
        "examples": len(labels),
        "predicted_classes": len(counts),
        "top_class_share": max(counts.values()) / len(predictions),
        "true_label_probability": sum(label_probability) / len(labels),
        "top_probability": sum(top_probability) / len(labels),
        "correct": "".join("1" if p == y else "0" for p, y in zip(predictions, labels)),
    }


def evaluate_export(
    model_dir: str, task: str, data_args: dict, max_eval_samples: int | None = None, train_examples: int | None = None
) -> dict:
    """``{"validation": {...}, "test": {...}}`` for the exported model in ``model_dir``, and ``"train"``
    (the seeded subset of ``train_examples`` training examples) when ``train_examples`` is given."""
    args = {"max_length": 64, "eval_batch_size": 128, **data_args}
    if max_eval_samples is not None:  # a smoke run's subset wins over the task's own
        args["max_eval_samples"] = max_eval_samples
    data = GlueDataModule(task=task, tokenizer=model_dir, max_train_samples=train_examples, **args)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    splits = [("validation", "validate", "val_dataloader"), ("test", "test", "test_dataloader")]
    if train_examples is not None:
        # The same subset the rows train on (GlueDataModule's seeded max_train_samples); order is irrelevant here.
        splits.insert(0, ("train", "fit", "train_dataloader"))
    results = {}
    for split, stage, loader in splits:
        data.setup(stage)
        results[split] = score(model, list(getattr(data, loader)()), data.build_metrics(f"{split}/"))
    for split in ("train", "validation"):  # choices read these as summaries; pairs are made on the test split
        results.get(split, {}).pop("correct", None)
    return results


def _data_arg(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    if not key or not _:
        raise argparse.ArgumentTypeError(f"--data takes key=value (a GlueDataModule argument), got {text!r}")
    try:
        return key, json.loads(value)  # numbers, true/false/null, lists
    except json.JSONDecodeError:
        return key, value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="exported model directory (with its tokenizer)")
    parser.add_argument("--task", required=True, help="GlueDataModule task name")
    parser.add_argument("--output", required=True, help="JSON file to write")
    parser.add_argument("--data", type=_data_arg, action="append", default=[], help="GlueDataModule argument key=value")
    parser.add_argument("--max-eval-samples", type=int, help="score a seeded subset (smoke runs)")
    parser.add_argument("--train-examples", type=int, help="also score the seeded subset of this many training examples")
    options = parser.parse_args(argv)
    if not Path(options.model, "config.json").is_file():
        parser.error(f"{options.model} is not an exported model directory (no config.json).")
    results = evaluate_export(options.model, options.task, dict(options.data), options.max_eval_samples, options.train_examples)
    Path(options.output).write_text(json.dumps(results))
    for split, values in results.items():
        print(f"{split}: accuracy {values['accuracy']:.4f}  ({values['examples']} examples, {values['predicted_classes']} classes predicted)")


if __name__ == "__main__":
    main()

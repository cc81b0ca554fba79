"""Scoring an export: per-split metrics, the soft-target summaries (probability of the true label,
top-class probability) checked against the model's own softmax, and the training subset the rows
train on when asked."""

from __future__ import annotations

import shutil

import torch

from benchmarks.leaderboard_eval import evaluate_export
from lightning_kd.core.features import model_inputs
from lightning_kd.data import GlueDataModule
from tests.conftest import make_tiny_bert

DATA = {"max_length": 16, "eval_batch_size": 8}


def test_scores_every_split_and_the_training_subset(tiny_tokenizer_dir, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_tokenizer_dir, model_dir)
    make_tiny_bert("classification", seed=3, layers=2).save_pretrained(model_dir)

    results = evaluate_export(str(model_dir), "rotten_tomatoes", DATA, max_eval_samples=20, train_examples=24)

    assert set(results) == {"train", "validation", "test"}
    assert [results[s]["examples"] for s in ("train", "validation", "test")] == [24, 20, 20]
    assert "correct" in results["test"] and "correct" not in results["train"] and "correct" not in results["validation"]
    test = results["test"]
    assert test["correct"].count("1") / 20 == test["accuracy"]
    # Independently: the same subset through the model, its softmax read directly.
    data = GlueDataModule(task="rotten_tomatoes", tokenizer=str(model_dir), max_train_samples=24, **DATA)
    data.setup("fit")
    model = make_tiny_bert("classification", seed=3, layers=2).eval()
    truth, top = [], []
    with torch.no_grad():
        for batch in data.train_dataloader():
            p = model(**model_inputs(batch)).logits.softmax(-1)
            truth += [p[i, y].item() for i, y in enumerate(batch["labels"].tolist())]
            top += p.max(-1).values.tolist()
    assert abs(results["train"]["true_label_probability"] - sum(truth) / 24) < 1e-5
    assert abs(results["train"]["top_probability"] - sum(top) / 24) < 1e-5
    assert results["train"]["true_label_probability"] <= results["train"]["top_probability"]


def test_without_train_examples_only_validation_and_test(tiny_tokenizer_dir, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_tokenizer_dir, model_dir)
    make_tiny_bert("classification", seed=3, layers=2).save_pretrained(model_dir)
    assert set(evaluate_export(str(model_dir), "rotten_tomatoes", DATA, max_eval_samples=8)) == {"validation", "test"}

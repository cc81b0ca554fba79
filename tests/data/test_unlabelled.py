"""Unlabelled transfer data for classification distillation: the two ways to declare unlabelled rows, the
hard term that reads only labelled rows, teacher terms that read every row, refusals and mid-epoch resume."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from lightning_kd.core.features import FeatureRequest, capture
from lightning_kd.core.unlabelled import check_unlabelled_rows
from lightning_kd.data import GlueDataModule
from lightning_kd.losses.prediction import PredictionLoss
from lightning_kd.methods import KD, StudentOnly, Theseus, TinyBERT
from lightning_kd.methods.multi_teacher import MTBERT, RLKD
from lightning_kd.methods.multi_teacher.mt_bert import teacher_gold_loss
from tests.cli_fixtures import fit_with_checkpoints, write_classification_csvs
from tests.conftest import make_batch, make_tiny_bert, write_tiny_tokenizer
from tests.families import make_family_model

UNLABELLED = -100


# ----------------------------------------------------------------------------- data
def _write_unlabelled(path: Path, texts: list[str]) -> Path:
    """A CSV (``text`` only) or a JSONL (``text`` plus a label column that must be ignored)."""
    if path.suffix == ".csv":
        path.write_text("text\n" + "".join(f"{text}\n" for text in texts))
    else:
        path.write_text("".join(json.dumps({"text": text, "label": "not a class"}) + "\n" for text in texts))
    return path


def _data(root: Path, tokenizer: Path, cache_dir: str, task: str = "text-classification", **kwargs) -> GlueDataModule:
    files = root / "train.csv", root / "validation.csv"
    if not files[0].exists():
        write_classification_csvs(root)
    options = {"batch_size": 4, "max_length": 16, "seed": 3, **kwargs}
    return GlueDataModule(task, str(tokenizer), train_file=str(files[0]), validation_file=str(files[1]),
                          text_columns=["text"], label_column="label", cache_dir=cache_dir, **options)


def _rows(data: GlueDataModule) -> list[tuple[tuple[int, ...], int]]:
    """The training split as (input ids, label) pairs, in row order."""
    train = data.datasets["train"]
    return [(tuple(ids), label) for ids, label in zip(train["input_ids"], train["labels"])]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_an_unlabelled_file_adds_training_rows_without_labels(tmp_path, tiny_tokenizer_dir, cache_dir, monkeypatch, suffix):
    printed = []
    monkeypatch.setattr("lightning_kd.data.glue.rank_zero_info", printed.append)
    extra = _write_unlabelled(tmp_path / f"extra{suffix}", ["good movie and fun", "the worst plot", "a sad story"])
    data = _data(tmp_path, tiny_tokenizer_dir, cache_dir, unlabelled_file=str(extra))
    data.setup("fit")
    labels = [label for _, label in _rows(data)]
    assert len(labels) == 27 and labels[24:] == [UNLABELLED] * 3 and set(labels[:24]) == {0, 1}
    assert printed == ["lightning_kd: text-classification training split: 24 labelled and 3 unlabelled examples (88.9% labelled)"]
    batches = list(data.train_dataloader())
    seen = torch.cat([b["labels"] for b in batches])
    assert seen.dtype == torch.int64 and int((seen == UNLABELLED).sum()) == 3
    assert sorted(torch.cat([b["example_index"] for b in batches]).tolist()) == list(range(27)), "every row keyed once"
    assert all(bool((b["labels"] >= 0).all()) for b in data.val_dataloader()), "validation is untouched"


def test_labelled_examples_keeps_the_labels_that_max_train_samples_would_take(tmp_path, tiny_tokenizer_dir, cache_dir):
    def rows(**kwargs) -> list[tuple[tuple[int, ...], int]]:
        data = _data(tmp_path, tiny_tokenizer_dir, cache_dir, **kwargs)
        data.setup("fit")
        return _rows(data)

    for window in ({}, {"skip_train_samples": 4, "max_train_samples": 15}):
        split, labelled_only = rows(**window), rows(**{**window, "max_train_samples": 5})
        mixed = rows(**window, labelled_examples=5)
        assert sorted(ids for ids, _ in mixed) == sorted(ids for ids, _ in split), "the same examples, some unlabelled"
        assert sorted(row for row in mixed if row[1] != UNLABELLED) == sorted(labelled_only), "exactly those, with their labels"
        assert sum(label == UNLABELLED for _, label in mixed) == len(split) - 5


def test_both_ways_together_and_the_cache_key(tmp_path, tiny_tokenizer_dir, cache_dir):
    extra = _write_unlabelled(tmp_path / "extra.csv", ["good movie", "bad film", "one two three", "fresh story"])
    data = _data(tmp_path, tiny_tokenizer_dir, cache_dir, unlabelled_file=str(extra), labelled_examples=6)
    data.setup("fit")
    assert (data.training_counts.labelled, data.training_counts.unlabelled) == (6, 22)
    plain = _data(tmp_path, tiny_tokenizer_dir, cache_dir)
    assert data.fingerprint["datasets_fingerprint"] != plain.fingerprint["datasets_fingerprint"]
    assert data.fingerprint["labelled_examples"] == 6 and "labelled_examples" not in plain.fingerprint
    assert not plain.has_unlabelled_rows and data.has_unlabelled_rows


def test_bad_unlabelled_data_is_refused_naming_the_fix(tmp_path, tiny_tokenizer_dir, cache_dir):
    def fit(**kwargs):
        _data(tmp_path, tiny_tokenizer_dir, cache_dir, **kwargs).setup("fit")

    short = tmp_path / "short.csv"
    short.write_text("text,source\ngood movie,web\nbad film\n")
    with pytest.raises(ValueError, match=r"short\.csv.*line 3.*expected 2 columns"):
        fit(unlabelled_file=str(short))
    other = tmp_path / "other.csv"
    other.write_text("review\ngood movie\n")
    with pytest.raises(ValueError, match=r"other\.csv.*no column\(s\) \['text'\]"):
        fit(unlabelled_file=str(other))
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("text_a,text_b\ngood movie,bad film\n")
    write_classification_csvs(tmp_path)
    with pytest.raises(ValueError, match="rows are pairs but the text-classification examples are single texts"):
        GlueDataModule("text-classification", str(tiny_tokenizer_dir), train_file=str(tmp_path / "train.csv"),
                       label_column="label", unlabelled_file=str(pairs), cache_dir=cache_dir).setup("fit")
    with pytest.raises(FileNotFoundError, match="unlabelled_file"):
        fit(unlabelled_file=str(tmp_path / "missing.csv"))
    with pytest.raises(ValueError, match=r"labelled_examples=24 keeps every row labelled.*has 24"):
        fit(labelled_examples=24)
    with pytest.raises(ValueError, match="labelled_examples must be a positive integer"):
        fit(labelled_examples=0)
    with pytest.raises(ValueError, match="'text-regression' is a regression task"):
        _data(tmp_path, tiny_tokenizer_dir, cache_dir, task="text-regression", labelled_examples=3)


# ----------------------------------------------------------------------------- the hard term
def _mixed_batch(labels: list[int]) -> dict[str, torch.Tensor]:
    batch = make_batch(batch=len(labels), seed=4)
    batch["labels"] = torch.tensor(labels)
    return batch


def _labelled_cross_entropy(model, batch) -> torch.Tensor:
    """The mean cross-entropy over the labelled rows, from a forward on those rows alone (no -100 anywhere)."""
    keep = batch["labels"] != UNLABELLED
    logits = model(**{k: v[keep] for k, v in batch.items() if k != "labels"}).logits.double()
    return F.cross_entropy(logits, batch["labels"][keep])


@pytest.mark.parametrize("family", ["bert", "distilbert", "modernbert", "gpt2", "llama"])
def test_the_models_own_loss_is_the_mean_over_labelled_rows_in_every_family(family):
    model = make_family_model(family, "classification", layers=2, num_labels=3).eval()
    batch = _mixed_batch([2, UNLABELLED, 0, UNLABELLED, 1])
    if family in ("distilbert", "gpt2", "llama", "modernbert"):
        batch.pop("token_type_ids")
    labelled = dict(batch, labels=torch.tensor([2, 1, 0, 0, 1]))
    with torch.no_grad():
        loss = capture(model, batch, FeatureRequest(), with_labels=True).loss
        expected = _labelled_cross_entropy(model, batch)
        none = capture(model, dict(batch, labels=torch.full((5,), UNLABELLED)), FeatureRequest(), with_labels=True).loss
        whole = capture(model, labelled, FeatureRequest(), with_labels=True).loss
        own = model(**labelled).loss  # a fully labelled batch still goes to the model's own loss
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)
    assert none.item() == 0.0
    assert whole.item() == own.item() and model.config.problem_type == "single_label_classification"


def _kd(**prediction) -> KD:
    teacher, student = make_tiny_bert(seed=1), make_tiny_bert(seed=2, layers=2, hidden=16)
    with torch.no_grad():  # spread the tiny models' logits so the terms are far from zero
        teacher.classifier.weight.mul_(50.0)
        student.classifier.weight.mul_(50.0)
    return KD(teacher=teacher, student=student, prediction=PredictionLoss(**{"hard_weight": 0.5, "temperature": 2.0, **prediction})).eval()


def test_the_hard_term_reads_only_the_labelled_rows():
    method = _kd()
    batch = _mixed_batch([1, UNLABELLED, 0, UNLABELLED])
    terms = method.compute_losses(batch)
    with torch.no_grad():
        expected = 0.5 * _labelled_cross_entropy(method.student, batch)
    assert terms["hard"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_an_all_unlabelled_batch_has_a_zero_hard_term_without_gradient_and_still_learns_from_the_teacher():
    method = _kd()
    terms = method.compute_losses(_mixed_batch([UNLABELLED] * 4))
    assert terms["hard"].item() == 0.0 and torch.isfinite(terms["loss"])
    weights = [p for p in method.student.parameters() if p.requires_grad]
    hard = torch.autograd.grad(terms["hard"], weights, allow_unused=True, retain_graph=True)
    assert all(g is None or not g.any() for g in hard)
    soft = torch.autograd.grad(terms["soft"], weights, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in soft)


def _tinybert() -> TinyBERT:
    teacher, student = make_tiny_bert(seed=1), make_tiny_bert(seed=2, layers=2)
    return TinyBERT(teacher=teacher, student=student, prediction=PredictionLoss(hard_weight=0.5, temperature=2.0)).eval()


@pytest.mark.parametrize("build", [_kd, _tinybert], ids=["kd", "tinybert"])
def test_teacher_terms_read_every_row_and_never_its_label(build):
    method = build()
    batch = _mixed_batch([1, UNLABELLED, 0, UNLABELLED])
    with torch.no_grad():
        base = method.compute_losses(batch)
        retexted = dict(batch, input_ids=batch["input_ids"].clone())
        retexted["input_ids"][1, 2:5] = torch.tensor([30, 31, 32])  # an unlabelled row's text
        moved = method.compute_losses(retexted)
        relabelled = method.compute_losses(dict(batch, labels=torch.tensor([1, 0, 0, UNLABELLED])))
    teacher_terms = [name for name in base if name not in ("hard", "loss")]
    assert len(teacher_terms) == (1 if isinstance(method, KD) else 5), teacher_terms
    for name in teacher_terms:
        assert moved[name] != base[name], f"{name} reads the unlabelled row"
        assert relabelled[name] == base[name], f"{name} never reads a label"
    assert moved["hard"] == base["hard"] and relabelled["hard"] != base["hard"], "the hard term reads labelled rows only"


# ----------------------------------------------------------------------------- refusals
def test_methods_and_strategies_that_cannot_use_unlabelled_rows_are_refused_at_fit_start():
    unlabelled, labelled = SimpleNamespace(has_unlabelled_rows=True), SimpleNamespace(has_unlabelled_rows=False)
    teachers = [make_tiny_bert(seed=1), make_tiny_bert(seed=3)]

    def student():
        return make_tiny_bert(seed=2, layers=2, hidden=16)

    refused = {
        "MTBERT strategy cannot train on unlabelled rows.*gold label": KD(teachers=teachers, student=student(), multi_teacher=MTBERT()),
        "RLKD strategy cannot train on unlabelled rows.*agent's state": KD(teachers=teachers, student=student(),
                                                                           multi_teacher=RLKD(num_teachers=2, num_classes=2)),
        "StudentOnly cannot train on unlabelled rows.*no teacher": StudentOnly(student=student()),
        "Theseus cannot train on unlabelled rows.*task loss": Theseus(teacher=teachers[0], student=make_tiny_bert(seed=2, layers=2)),
    }
    for message, method in refused.items():
        with pytest.raises(ValueError, match=message):
            check_unlabelled_rows(method, unlabelled)
        check_unlabelled_rows(method, labelled)
    for method in (KD(teachers=teachers, student=student()),
                   KD(teachers=teachers, student=student(), multi_teacher=RLKD(stage="average"))):
        check_unlabelled_rows(method, unlabelled)
    with pytest.raises(ValueError, match="unlabelled rows .* needs a label on every example"):
        teacher_gold_loss(torch.zeros(2, 3), torch.tensor([1, UNLABELLED]))


def test_a_fit_refuses_before_any_step(tmp_path, tiny_tokenizer_dir, cache_dir):
    import pytorch_lightning as pl

    data = _data(tmp_path, tiny_tokenizer_dir, cache_dir, labelled_examples=4)
    trainer = pl.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.raises(ValueError, match="StudentOnly cannot train on unlabelled rows"):
        trainer.fit(StudentOnly(student=make_tiny_bert(seed=2, layers=2, hidden=16)), datamodule=data)
    assert trainer.global_step == 0


# ----------------------------------------------------------------------------- resume
def test_a_run_resumed_mid_epoch_ends_with_the_uninterrupted_runs_student(tmp_path, tiny_tokenizer_dir, cache_dir):
    teacher = tmp_path / "teacher"
    make_tiny_bert(seed=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).save_pretrained(teacher)
    write_tiny_tokenizer(teacher)
    extra = _write_unlabelled(tmp_path / "extra.csv", ["good movie", "bad film", "one two three", "fresh story", "sad acting"])

    def fit(root: Path, **kwargs) -> KD:
        data = _data(tmp_path, tiny_tokenizer_dir, cache_dir, labelled_examples=6, unlabelled_file=str(extra))
        method = KD(teacher=str(teacher), student_init="teacher_uniform", student_layers=2,
                    prediction=PredictionLoss(hard_weight=0.5, temperature=2.0))
        fit_with_checkpoints(method, data, root, **kwargs)
        return method

    whole = fit(tmp_path / "whole")  # 29 rows, 8 batches an epoch: step 3 is mid-epoch
    fit(tmp_path / "first", stop_at=3)
    resumed = fit(tmp_path / "resumed", ckpt_path=str(next((tmp_path / "first" / "ckpt").glob("*step=3*.ckpt"))))
    for key, value in whole.student.state_dict().items():
        torch.testing.assert_close(resumed.student.state_dict()[key], value, rtol=1e-5, atol=1e-7, msg=key)

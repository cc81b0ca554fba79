"""The cache through `lightning-kd fit` and `Trainer.fit`: epoch 2 never runs the teacher, a second
run reuses the cache, a run on other data is refused, pretraining needs static masks."""

from __future__ import annotations

import pytest

from lightning_kd.cache import StaleCacheError
from lightning_kd.cli import run_cli
from tests.cache import CountTeacherForwards
from tests.cli_fixtures import (
    classification_data_args,
    pretrain_data_args,
    quick_trainer_args,
    write_cli_assets,
)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return write_cli_assets(tmp_path_factory.mktemp("cache_cli_assets"))


def _fit(assets, root, cache, *extra, stage="classification"):
    teacher = assets[f"teacher_{stage}"]
    data = classification_data_args(teacher, assets) if stage == "classification" else pretrain_data_args(teacher, assets["corpus"])
    cli = run_cli([
        "fit",
        "--model=lightning_kd.methods.KD",
        f"--model.teacher={teacher}",
        "--model.student_init=teacher_uniform",
        "--model.student_layers=3",
        "--model.teacher_cache=lightning_kd.cache.TeacherCache",
        f"--model.teacher_cache.path={cache}",
        *data,
        *quick_trainer_args(root),
        "--trainer.max_steps=-1",
        "--trainer.max_epochs=2",
        "--trainer.callbacks+=tests.cache.CountTeacherForwards",
        *extra,
    ])
    counter = next(c for c in cli.trainer.callbacks if isinstance(c, CountTeacherForwards))
    return cli, counter.per_epoch


def test_epoch_two_and_a_second_run_read_the_cache(assets, tmp_path):
    cache = tmp_path / "cache"
    batches = 24 // 4
    cli, forwards = _fit(assets, tmp_path / "first", cache)
    assert cli.trainer.current_epoch == 2
    assert forwards == [1 + batches, 0], "epoch 1: a shape probe and every batch live; epoch 2: the cache alone"
    files = sorted(p.name for p in cache.rglob("*"))

    cli, forwards = _fit(assets, tmp_path / "second", cache)
    assert forwards == [1, 0], "only the sample check runs the teacher in a run whose data is all cached"
    assert sorted(p.name for p in cache.rglob("*")) == files, "a warm run appends nothing"

    with pytest.raises(StaleCacheError, match=r"dataset: .*max_length: 16 → 12"):
        _fit(assets, tmp_path / "third", cache, "--data.max_length=12")


def test_pretraining_with_static_masks_and_top_k_logits(assets, tmp_path):
    extra = ("--data.masking_seed=0", "--model.student_init=teacher_first", "--model.student_layers=2")
    cli, forwards = _fit(assets, tmp_path / "run", tmp_path / "cache", *extra, stage="mlm")
    blocks = len(cli.datamodule.datasets["train"])
    assert forwards == [1 + -(-blocks // 4), 0]
    assert (tmp_path / "cache" / "teacher0" / "manifest.json").read_text().count('"masking_seed": 0') == 1
    with pytest.raises(ValueError, match="Set data.init_args.masking_seed"):
        _fit(assets, tmp_path / "dynamic", tmp_path / "cache", *extra[1:], stage="mlm")


def test_a_cache_filled_ahead_of_time_serves_trainer_fit(assets, tmp_path):
    import pytorch_lightning as pl

    from lightning_kd.cache import TeacherCache
    from lightning_kd.data import GlueDataModule
    from lightning_kd.methods import KD

    teacher = str(assets["teacher_classification"])
    data = GlueDataModule("text-classification", teacher, train_file=str(assets["train"]), validation_file=str(assets["validation"]),
                          text_columns=["text"], label_column="label", batch_size=4, max_length=16)
    cache = TeacherCache(path=str(tmp_path / "cache"))
    method = KD(teacher=teacher, student_init="teacher_uniform", student_layers=3, num_labels=2, teacher_cache=cache)
    assert cache.fill(method, data) == 24
    counter = CountTeacherForwards()
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[counter], default_root_dir=tmp_path)
    trainer.fit(method, datamodule=data)
    assert counter.per_epoch == [1], "only the sample check runs the teacher"

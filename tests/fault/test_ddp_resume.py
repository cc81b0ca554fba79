"""A two-process DDP run resumed mid-epoch from a periodic checkpoint ends with the uninterrupted
run's weights: under DDP Lightning replaces the library's sampler by a ``DistributedSampler``, and
the resumable loader then skips the batches the checkpoint says were consumed."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from lightning_kd.data import GlueDataModule
from lightning_kd.losses.prediction import PredictionLoss
from lightning_kd.methods import KD
from tests.cli_fixtures import write_classification_csvs, write_models
from tests.conftest import make_tiny_bert

STEPS, EVERY = 5, 2  # 24 rows / (2 ranks x batch 2) = 6 steps per epoch: resume at step 2, mid-epoch


def _method() -> KD:
    no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    teacher = make_tiny_bert(seed=1, **no_dropout)
    student = make_tiny_bert(seed=2, layers=2, hidden=16, **no_dropout)
    # adam_epsilon=1: steps proportional to gradients, so float rounding differences between runs stay tiny.
    return KD(teacher=teacher, student=student, prediction=PredictionLoss(temperature=2.0), learning_rate=0.05, adam_epsilon=1.0, lr_schedule="constant")


def _fit(assets: dict, root, steps: int, ckpt_path=None) -> dict[str, torch.Tensor]:
    pl.seed_everything(3)
    data = GlueDataModule(
        task="text-classification",
        tokenizer=str(assets["teacher_classification"]),
        train_file=str(assets["train"]),
        validation_file=str(assets["validation"]),
        text_columns=["text"],
        label_column="label",
        batch_size=2,
        max_length=16,
    )
    method = _method()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_steps=steps,
        limit_val_batches=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ModelCheckpoint(dirpath=root, filename="{step}", every_n_train_steps=EVERY, save_top_k=-1)],
        default_root_dir=root,
    )
    trainer.fit(method, datamodule=data, ckpt_path=ckpt_path)
    return {k: v.detach().clone() for k, v in method.student.state_dict().items()}


@pytest.mark.slow
def test_ddp_resume_mid_epoch_reaches_the_uninterrupted_weights(tmp_path):
    assets = {**write_models(tmp_path), **write_classification_csvs(tmp_path)}
    straight = _fit(assets, tmp_path / "straight", STEPS)
    resumed = _fit(assets, tmp_path / "resumed", STEPS, ckpt_path=str(tmp_path / "straight" / f"step={EVERY}.ckpt"))
    initial = _method().student.state_dict()
    assert any(not torch.equal(straight[k], initial[k]) for k in straight), "training did not move the student"
    for key, value in straight.items():
        torch.testing.assert_close(resumed[key], value, rtol=1e-5, atol=1e-6, msg=f"{key} differs after the resume")

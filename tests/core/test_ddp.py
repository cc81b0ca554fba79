"""Two CPU processes under DDP (gloo) reach the same student weights as one process on the same global batches."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lightning_kd.losses.prediction import PredictionLoss
from lightning_kd.methods import KD
from tests.conftest import make_batch, make_tiny_bert


class _Rows(Dataset):
    def __init__(self, rows: int = 16) -> None:
        batch = make_batch(batch=rows, length=10, seed=7)
        self.items = [{k: v[i] for k, v in batch.items()} for i in range(rows)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]


def _method() -> KD:
    no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    teacher = make_tiny_bert(seed=1, **no_dropout)
    student = make_tiny_bert(seed=2, layers=2, hidden=16, **no_dropout)
    # A large epsilon makes AdamW's step proportional to the gradient; with the default 1e-8, Adam turns
    # float rounding in near-zero gradients into full ±lr steps and hides real equality.
    return KD(teacher=teacher, student=student, prediction=PredictionLoss(temperature=2.0), learning_rate=0.5, adam_epsilon=1.0, lr_schedule="constant")


class _Data(pl.LightningDataModule):
    """Sequential rows; under DDP rank r reads rows r, r+2, … so both ranks' batches of 4 together
    are exactly the single process's batch of 8 (Lightning's own sampler would shuffle)."""

    def __init__(self, per_device_batch: int) -> None:
        super().__init__()
        self.per_device_batch = per_device_batch

    def train_dataloader(self) -> DataLoader:
        rows = _Rows()
        sampler = None
        if torch.distributed.is_initialized():
            sampler = DistributedSampler(rows, shuffle=False)
        return DataLoader(rows, batch_size=self.per_device_batch, sampler=sampler, shuffle=False)


def _fit(method: KD, devices: int, per_device_batch: int) -> dict:
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
    )
    trainer.fit(method, datamodule=_Data(per_device_batch))
    return {k: v.detach().clone() for k, v in method.student.state_dict().items()}


@pytest.mark.slow
def test_ddp_two_processes_match_one_process():
    single = _fit(_method(), devices=1, per_device_batch=8)
    double = _fit(_method(), devices=2, per_device_batch=4)
    initial = _method().student.state_dict()
    moved = [k for k in single if not torch.equal(single[k], initial[k])]
    assert moved, "training did not change the student"
    for key in single:
        torch.testing.assert_close(double[key], single[key], rtol=1e-4, atol=1e-5, msg=f"{key} differs")

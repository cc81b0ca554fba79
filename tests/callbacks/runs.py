"""Tiny real ``pl.Trainer`` runs for schedule callbacks: an in-memory data module that resumes mid-epoch,
a recorder of per-step losses and module attributes, and a stop-then-resume comparison."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import Dataset

from lightning_kd.data.sampling import EpochShuffleSampler, ResumableDataLoader, fit_position
from tests.cli_fixtures import StopAtStep
from tests.conftest import make_batch, make_tiny_bert

NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


def tiny(kind: str = "classification", seed: int = 1, **shape):
    """A tiny BERT without dropout, so a run is a pure function of weights and data order."""
    return make_tiny_bert(kind, seed=seed, **NO_DROPOUT, **shape)


class _Rows(Dataset):
    def __init__(self, kind: str, rows: int) -> None:
        batch = make_batch(kind, batch=rows, length=10, seed=7)
        self.items = [{k: v[i] for k, v in batch.items()} for i in range(rows)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]


class RowsData(pl.LightningDataModule):
    """``rows`` examples in batches of 4, shuffled per epoch from the seed, resumable mid-epoch."""

    def __init__(self, kind: str = "classification", rows: int = 16) -> None:
        super().__init__()
        self.kind, self.rows = kind, rows

    def train_dataloader(self) -> ResumableDataLoader:
        rows = _Rows(self.kind, self.rows)
        return ResumableDataLoader(
            rows, batch_size=4, sampler=EpochShuffleSampler(rows, seed=0), position=lambda: fit_position(self.trainer)
        )


class Recorder(pl.Callback):
    """Per training batch: the global step it ran at, its loss and copies of the named module attributes."""

    def __init__(self, *attributes: str) -> None:
        self.attributes, self.rows = attributes, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        values = {name: copy.deepcopy(getattr(pl_module, name)) for name in self.attributes}
        self.rows.append((self._step, float(outputs["loss"]), values))


def fit(
    method, callbacks: list, root: Path, max_steps: int, kind: str = "classification", rows: int = 16, ckpt_path=None, extra=()
):
    """Fit ``method`` for ``max_steps`` steps on :class:`RowsData`; returns the trainer."""
    pl.seed_everything(7, verbose=False)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        max_epochs=100,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in extra),
        num_sanity_val_steps=0,
        limit_val_batches=0,
        default_root_dir=root,
        callbacks=[*callbacks, *extra],
    )
    # weights_only=False: the checkpoint is our own, and its hyper-parameters hold a PredictionLoss dataclass.
    trainer.fit(method, datamodule=RowsData(kind, rows), ckpt_path=ckpt_path, weights_only=False if ckpt_path else None)
    return trainer


def stop_and_resume(
    make_method: Callable[[], pl.LightningModule],
    make_callbacks: Callable[[], list],
    root: Path,
    attributes: tuple[str, ...],
    total: int = 6,
    stop: int = 3,
    kind: str = "classification",
    rows: int = 16,
):
    """Run ``total`` steps in one go, and ``stop`` steps + a ``--ckpt_path``-style resume to ``total``.

    Returns the two recorders' rows from step ``stop`` on (uninterrupted, resumed) and the checkpoint.
    """
    full = Recorder(*attributes)
    fit(make_method(), [*make_callbacks(), full], root / "full", total, kind, rows)
    checkpoint_dir = root / "ckpt"
    saving = ModelCheckpoint(dirpath=checkpoint_dir, every_n_train_steps=stop, save_top_k=-1)
    fit(make_method(), make_callbacks(), root / "first", total, kind, rows, extra=[saving, StopAtStep(stop)])
    checkpoint = next(checkpoint_dir.glob(f"*step={stop}*.ckpt"))
    resumed = Recorder(*attributes)
    fit(make_method(), [*make_callbacks(), resumed], root / "resumed", total, kind, rows, ckpt_path=checkpoint)
    after = [row for row in full.rows if row[0] >= stop]
    return after, resumed.rows, torch.load(checkpoint, weights_only=False)


def assert_same_rows(expected: list, actual: list) -> None:
    """Same steps, same schedule values and the same losses (to float tolerance)."""
    assert [r[0] for r in actual] == [r[0] for r in expected], "the resumed run ran other steps"
    for (step, loss, values), (_, resumed_loss, resumed_values) in zip(expected, actual):
        assert resumed_values == values, f"step {step}: schedule state {resumed_values} != {values}"
        assert abs(resumed_loss - loss) <= 1e-5 * max(1.0, abs(loss)), f"step {step}: loss {resumed_loss} != {loss}"

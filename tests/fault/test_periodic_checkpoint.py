"""PeriodicCheckpoint: a directory that survives relaunches, the run seed in the checkpoint, keyed reseeding."""

from __future__ import annotations

import os

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.demos.boring_classes import BoringModel
from pytorch_lightning.loggers import CSVLogger

from lightning_kd.fault import PeriodicCheckpoint
from lightning_kd.fault.step_seed import batch_seed


@pytest.fixture(autouse=True)
def restore_global_seed(monkeypatch):
    """seed_everything writes PL_GLOBAL_SEED into the environment; give later tests back the original."""
    monkeypatch.setenv("PL_GLOBAL_SEED", "0")  # records the original value (or its absence) for teardown
    monkeypatch.delenv("PL_GLOBAL_SEED")


class RecordDraws(pl.Callback):
    """Records one draw from the global generator at every training step (what dropout would see)."""

    def __init__(self) -> None:
        self.draws: dict[int, float] = {}

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self.draws[trainer.global_step] = torch.rand(()).item()


def _fit(root, steps: int, ckpt_path=None, seed: int | None = 5, **checkpoint_args) -> tuple[PeriodicCheckpoint, RecordDraws]:
    if seed is not None:
        pl.seed_everything(seed, verbose=False)
    else:
        os.environ.pop("PL_GLOBAL_SEED", None)
    checkpoint, record = PeriodicCheckpoint(every_n_train_steps=2, **checkpoint_args), RecordDraws()
    trainer = pl.Trainer(
        default_root_dir=root, logger=CSVLogger(root), max_steps=steps, limit_val_batches=0,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[checkpoint, record],
    )
    trainer.fit(BoringModel(), ckpt_path=ckpt_path)
    return checkpoint, record


def test_default_directory_is_the_same_for_every_launch_and_last_finds_it(tmp_path):
    first, _ = _fit(tmp_path, steps=4, seed=None)
    assert first.dirpath == str((tmp_path / "checkpoints").resolve()), "not the logger's version_<n> directory"
    second, _ = _fit(tmp_path, steps=6, ckpt_path="last", seed=None)  # a new launch: the logger moves on to version_1
    assert (tmp_path / "lightning_logs" / "version_1").exists()
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 6
    assert second.base_seed == first.base_seed, "the resumed launch continues the run seed drawn by the first"


def test_each_step_draws_the_same_numbers_after_a_resume(tmp_path):
    _, uninterrupted = _fit(tmp_path / "a", steps=6)
    _fit(tmp_path / "b", steps=4)
    _, resumed = _fit(tmp_path / "b", steps=6, ckpt_path="last")
    assert {s: uninterrupted.draws[s] for s in (4, 5)} == resumed.draws


def test_without_reseeding_a_resumed_run_draws_other_numbers(tmp_path):
    _, uninterrupted = _fit(tmp_path / "a", steps=6, reseed_every_batch=False)
    _fit(tmp_path / "b", steps=4, reseed_every_batch=False)
    _, resumed = _fit(tmp_path / "b", steps=6, ckpt_path="last", reseed_every_batch=False)
    assert {s: uninterrupted.draws[s] for s in (4, 5)} != resumed.draws


def test_batch_seeds_depend_on_every_part_of_the_key():
    seeds = {batch_seed(7, rank, step, batch) for rank in (0, 1) for step in (0, 1) for batch in (0, 1)}
    assert len(seeds) == 8 and all(0 <= s < 2**63 for s in seeds)
    assert batch_seed(7, 0, 3, 1) == batch_seed(7, 0, 3, 1) != batch_seed(8, 0, 3, 1)

"""AtomicCheckpointIO: a killed or failed write never costs the previous checkpoint, and leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.demos.boring_classes import BoringModel

from lightning_kd.fault import AtomicCheckpointIO, atomic_write, install_atomic_checkpoint_io
from lightning_kd.fault.atomic_io import temporary_files

ROOT = Path(__file__).resolve().parents[2]


def test_save_replaces_the_file_and_loads_back(tmp_path):
    io = AtomicCheckpointIO()
    target = tmp_path / "sub" / "model.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, target)
    io.save_checkpoint({"step": 2, "w": torch.zeros(3)}, target)
    loaded = io.load_checkpoint(target)
    assert loaded["step"] == 2 and torch.equal(loaded["w"], torch.zeros(3))
    assert temporary_files(target.parent) == []
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask()), "the file gets normal permissions, not mkstemp's 0600"


def test_a_failing_write_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    target = tmp_path / "last.ckpt"
    target.write_bytes(b"old and complete")

    def fail_halfway(handle):
        handle.write(b"new but")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, fail_halfway)
    assert target.read_bytes() == b"old and complete"
    assert temporary_files(tmp_path) == []


def test_sigkill_mid_write_keeps_the_old_checkpoint_and_the_next_save_cleans_up(tmp_path):
    io = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1}, target)
    script = (
        "import torch; from tests.fault.helpers import DieDuringWrite;"
        f"DieDuringWrite(write=1).save_checkpoint({{'step': 2, 'w': torch.randn(100_000)}}, {str(target)!r})"
    )
    result = subprocess.run([sys.executable, "-c", script], check=False, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert result.returncode == -9, "the writer must have been SIGKILLed"
    leftovers = temporary_files(tmp_path, "last.ckpt")
    assert len(leftovers) == 1 and leftovers[0].stat().st_size > 0, "the kill happened inside the write"
    assert io.load_checkpoint(target) == {"step": 1}, "the previous checkpoint survives intact"
    AtomicCheckpointIO().save_checkpoint({"step": 3}, target)  # a new run's first save into the directory
    assert temporary_files(tmp_path) == []
    assert io.load_checkpoint(target) == {"step": 3}


def test_a_symlinked_target_is_replaced_not_written_through(tmp_path):
    step_file = tmp_path / "step=2.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 2}, step_file)
    link = tmp_path / "last.ckpt"
    link.symlink_to(step_file.name)
    AtomicCheckpointIO().save_checkpoint({"step": 4}, link)
    assert not link.is_symlink()
    assert torch.load(step_file)["step"] == 2 and torch.load(link)["step"] == 4


@pytest.mark.parametrize("save_last", [True, "link"])
def test_model_checkpoint_last_and_top_k_removal_work(tmp_path, save_last):
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_top_k=1, save_last=save_last)
    trainer = pl.Trainer(
        max_steps=6, limit_val_batches=0, logger=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[checkpoint], plugins=[AtomicCheckpointIO()],
    )
    trainer.fit(BoringModel())
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["epoch=0-step=6.ckpt", "last.ckpt"], "top-1 removes older files; last.ckpt is kept"
    assert (tmp_path / "last.ckpt").is_symlink() == (save_last == "link")
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["global_step"] == 6


def test_installed_only_where_nobody_chose_a_checkpoint_io():
    trainer = pl.Trainer(logger=False, enable_progress_bar=False)
    assert install_atomic_checkpoint_io(trainer) and isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    chosen = TorchCheckpointIO()
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, plugins=[chosen])
    assert not install_atomic_checkpoint_io(trainer) and trainer.strategy.checkpoint_io is chosen


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask

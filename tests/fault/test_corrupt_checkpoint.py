"""A truncated or corrupt checkpoint fails with the intact checkpoints beside it (newest first) and how to use one,
instead of torch's ``PytorchStreamReader failed reading zip archive``."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from lightning_kd.cli import run_cli
from lightning_kd.fault import AtomicCheckpointIO, CorruptCheckpointError
from lightning_kd.fault.checkpoint_files import intact_checkpoints, readable_archive
from tests.cli_fixtures import classification_data_args, quick_trainer_args, write_classification_csvs, write_models


def write_checkpoints(directory: Path, names: list[str]) -> list[Path]:
    """Small checkpoints written one after the other (older first), with distinct modification times."""
    paths = []
    for age, name in enumerate(names):
        path = directory / name
        torch.save({"state_dict": {"w": torch.full((64,), float(age))}, "global_step": age}, path)
        os.utime(path, ns=(1_000_000_000 * (age + 1),) * 2)
        paths.append(path)
    return paths


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_a_truncated_checkpoint_names_the_intact_ones_newest_first(tmp_path):
    step2, step4, broken, last = write_checkpoints(tmp_path, ["epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt", "epoch=0-step=6.ckpt", "last.ckpt"])
    truncate(last)
    truncate(broken, keep=0.9)  # also cut off: not offered as intact
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    assert not readable_archive(last) and readable_archive(step4)
    with pytest.raises(CorruptCheckpointError) as error:
        AtomicCheckpointIO().load_checkpoint(last)
    assert str(error.value) == (
        f"Checkpoint {last} is truncated or corrupt (not a complete torch.save archive), probably from a write that was cut off. "
        f"Intact checkpoints in {tmp_path}, newest first: epoch=0-step=4.ckpt, epoch=0-step=2.ckpt; use one instead, e.g. --ckpt_path {step4}"
    )
    assert "PytorchStreamReader" in str(error.value.__cause__), "torch's own error stays attached as the cause"
    assert intact_checkpoints(tmp_path) == [step4, step2]


def test_nothing_intact_left_says_to_start_over(tmp_path):
    (only,) = write_checkpoints(tmp_path, ["last.ckpt"])
    only.write_bytes(b"")
    with pytest.raises(CorruptCheckpointError, match="No intact checkpoint is left in .*; start the run again without --ckpt_path"):
        AtomicCheckpointIO().load_checkpoint(only)


class NotAllowed:
    """A class the weights-only unpickler refuses."""


def test_other_load_errors_are_not_called_corruption(tmp_path):
    path = tmp_path / "custom.ckpt"
    torch.save({"thing": NotAllowed()}, path)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        AtomicCheckpointIO().load_checkpoint(path, weights_only=True)
    with pytest.raises(FileNotFoundError):
        AtomicCheckpointIO().load_checkpoint(tmp_path / "missing.ckpt")


def test_resuming_from_a_truncated_last_ckpt_points_at_the_periodic_file_which_then_resumes(tmp_path_factory, tmp_path):
    assets_root = tmp_path_factory.mktemp("corrupt_assets")
    assets = {**write_models(assets_root), **write_classification_csvs(assets_root)}
    teacher = assets["teacher_classification"]
    args = [
        "fit", "--model=lightning_kd.methods.KD", f"--model.teacher={teacher}", "--model.student_init=teacher_uniform",
        "--model.student_layers=3", *classification_data_args(teacher, assets), *quick_trainer_args(tmp_path, steps=4),
        "--checkpoint=lightning_kd.fault.PeriodicCheckpoint", "--checkpoint.every_n_train_steps=2",
    ]
    run_cli(args)
    directory = tmp_path / "checkpoints"
    truncate(directory / "last.ckpt")
    resume = [a if not a.startswith("--trainer.max_steps") else "--trainer.max_steps=6" for a in args]
    with pytest.raises(CorruptCheckpointError, match=r"newest first: epoch=0-step=4\.ckpt, epoch=0-step=2\.ckpt; use one instead") as error:
        run_cli([*resume, "--ckpt_path=last"])
    named = Path(str(error.value).split("--ckpt_path ")[1])
    assert named == directory / "epoch=0-step=4.ckpt"
    resumed = run_cli([*resume, f"--ckpt_path={named}"])
    assert resumed.trainer.global_step == 6 and Path(resumed.trainer.ckpt_path) == named

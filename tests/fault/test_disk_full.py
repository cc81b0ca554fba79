"""A checkpoint that cannot be written (a full disk) is one short message naming the file, the cause and the
intact checkpoint to resume from, exit status 3; nothing on disk is damaged."""

from __future__ import annotations

import errno
import json
import os
import sys

import pytest
import torch

from lightning_kd.cli import main
from lightning_kd.fault import CheckpointWriteError
from lightning_kd.fault.atomic_io import atomic_write, temporary_files
from tests.cli_fixtures import classification_data_args, quick_trainer_args, write_classification_csvs, write_models
from tests.fault.helpers import _FullDiskFile


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("disk_full_assets")
    return {**write_models(root), **write_classification_csvs(root)}


def test_a_full_disk_inside_torch_save_surfaces_as_the_oserror_and_leaves_the_old_file(tmp_path):
    target = tmp_path / "last.ckpt"
    target.write_bytes(b"previous")
    with pytest.raises(OSError) as error:  # torch.save itself would raise RuntimeError: [enforce fail at inline_container.cc]
        atomic_write(target, lambda handle: torch.save({"w": torch.zeros(4096)}, handle),
                     opener=lambda descriptor: _FullDiskFile(os.fdopen(descriptor, "wb"), 1024))
    assert error.value.errno == errno.ENOSPC and not isinstance(error.value, RuntimeError)
    assert target.read_bytes() == b"previous" and temporary_files(tmp_path) == []


def test_the_command_reports_a_full_disk_in_one_message_with_the_intact_checkpoint(assets, tmp_path, monkeypatch, capsys):
    teacher = assets["teacher_classification"]
    # Checkpoints every step, each with last.ckpt: writes 1 and 2 are step 1's, write 3 (step 2's file) hits the full disk.
    full_disk = json.dumps({"class_path": "tests.fault.helpers.FullDiskAfter", "init_args": {"write": 3}})
    argv = ["fit", "--model=KD", f"--model.teacher={teacher}", "--model.student_init=teacher_uniform", "--model.student_layers=3",
            *classification_data_args(teacher, assets), *quick_trainer_args(tmp_path, steps=4),
            "--checkpoint=lightning_kd.fault.PeriodicCheckpoint", "--checkpoint.every_n_train_steps=1", f"--trainer.plugins={full_disk}"]
    monkeypatch.setattr(sys, "argv", ["lightning-kd", *argv])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 3, err[-3000:]
    assert "Traceback" not in err and "inline_container" not in err
    directory = tmp_path / "checkpoints"
    messages = [line for line in err.splitlines() if line.startswith("lightning-kd: error: ")]
    assert len(messages) == 1, err[-3000:]
    assert messages[0].startswith(
        f"lightning-kd: error: Could not write the checkpoint {directory / 'epoch=0-step=2.ckpt'}: No space left on device (ENOSPC, "
    )
    assert "Nothing on disk was damaged" in messages[0]
    assert "Intact checkpoints, newest first: last.ckpt (step 1), epoch=0-step=1.ckpt (step 1)." in messages[0]
    assert messages[0].endswith(f"then resume with --ckpt_path {directory / 'last.ckpt'}.")
    assert sorted(p.name for p in directory.iterdir()) == ["epoch=0-step=1.ckpt", "last.ckpt"]
    assert torch.load(directory / "last.ckpt", weights_only=False)["global_step"] == 1
    assert not (tmp_path / "student").exists()


def test_the_error_is_an_oserror_with_the_cause_errno(tmp_path):
    error = CheckpointWriteError("message", OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert isinstance(error, OSError) and error.errno == errno.EDQUOT and str(error) == "message"

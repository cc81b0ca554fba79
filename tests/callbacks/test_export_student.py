"""ExportStudent: a bad export place fails at fit start (before any step), never over the run's own
directories or a user's files; a failed final write says where the trained weights are and how to export them."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lightning_kd.callbacks.export_student import ExportFailedError
from lightning_kd.cli import run_cli
from lightning_kd.core.export_target import ExportTargetError
from lightning_kd.export import main as export_main
from lightning_kd.methods import KD
from tests.cli_fixtures import classification_data_args, quick_trainer_args, write_classification_csvs, write_models


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("export_assets")
    return {**write_models(root), **write_classification_csvs(root)}


def kd_args(assets: dict, root: Path, *extra: str, steps: int = 4) -> list[str]:
    teacher = assets["teacher_classification"]
    return [
        "--model=lightning_kd.methods.KD",
        f"--model.teacher={teacher}",
        "--model.student_init=teacher_uniform",
        "--model.student_layers=3",
        *classification_data_args(teacher, assets),
        *quick_trainer_args(root, steps=steps),
        "--checkpoint=lightning_kd.fault.PeriodicCheckpoint",
        "--checkpoint.every_n_train_steps=2",
        *extra,
    ]


def snapshot(directory: Path) -> list[str]:
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*"))


def fit_until_refused(assets: dict, root: Path, dirpath: Path) -> tuple[str, int]:
    cli = run_cli(kd_args(assets, root, f"--export.dirpath={dirpath}"), run=False)
    with pytest.raises(ExportTargetError) as error:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return str(error.value), cli.trainer.global_step


def test_exporting_over_the_run_directory_is_refused_at_fit_start(assets, tmp_path):
    # What a user lost before: --export.dirpath = default_root_dir replaced checkpoints/ and lightning_logs/.
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "epoch=0-step=2.ckpt").write_bytes(b"an earlier launch's checkpoint")
    (tmp_path / "lightning_logs").mkdir()
    before = snapshot(tmp_path)
    message, steps = fit_until_refused(assets, tmp_path, tmp_path)
    assert steps == 0, "refused before the first training step"
    assert f"The export directory {tmp_path.resolve()} is this run's default_root_dir" in message
    assert snapshot(tmp_path) == before


def test_the_checkpoint_directory_itself_is_refused(assets, tmp_path):
    # Known only once PeriodicCheckpoint resolved its default directory: the on_fit_start check.
    message, steps = fit_until_refused(assets, tmp_path / "run", tmp_path / "run" / "checkpoints")
    assert steps == 0 and "is this run's checkpoint directory" in message


def test_a_directory_with_a_users_files_is_refused_at_fit_start(assets, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "NOTES.txt").write_text("keep me")
    (mine / "sub").mkdir()
    message, steps = fit_until_refused(assets, tmp_path / "run", mine)
    assert steps == 0 and "did not write (NOTES.txt, sub/)" in message
    assert snapshot(mine) == ["NOTES.txt", "sub"]


def test_an_unwritable_place_is_refused_at_fit_start(assets, tmp_path):
    (tmp_path / "a_file").write_text("")
    message, steps = fit_until_refused(assets, tmp_path / "run", tmp_path / "a_file" / "student")
    assert steps == 0 and "is a file, not a directory" in message


def test_a_failed_final_write_names_the_saved_weights_and_the_command_that_exports_them(assets, tmp_path, monkeypatch):
    def refuse(self, directory):
        raise PermissionError(13, "Permission denied", str(Path(directory).parent / ".student.tmp-1234"))

    monkeypatch.setattr(KD, "export_student", refuse)
    target = tmp_path / "student"
    with pytest.raises(ExportFailedError) as error:
        run_cli(["fit", *kd_args(assets, tmp_path)])
    message = str(error.value)
    weights = tmp_path / "checkpoints" / "student-weights-step=4.ckpt"
    assert f"Could not export the student to {target} (PermissionError: [Errno 13] Permission denied" in message
    assert f"The trained weights (step 4) are saved in {weights}" in message
    command = message.splitlines()[-1].strip()
    assert command == f"python -m lightning_kd.export --config {tmp_path / 'config.yaml'} --ckpt_path {weights} --dirpath {target}"

    # The saved weights are the final ones (last.ckpt was written at the same, last step) ...
    saved = torch.load(weights, weights_only=False)
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert saved["global_step"] == last["global_step"] == 4 and "optimizer_states" not in saved
    for key, value in last["state_dict"].items():
        torch.testing.assert_close(saved["state_dict"][key], value, rtol=0, atol=0, msg=key)

    # ... and the printed command, run as printed, exports them.
    monkeypatch.undo()
    export_main(shlex.split(command)[3:])
    exported = load_file(target / "model.safetensors")
    students = {k.removeprefix("student."): v for k, v in saved["state_dict"].items() if k.startswith("student.")}
    assert set(exported) <= set(students) and len(exported) > 10
    for key, value in exported.items():
        torch.testing.assert_close(value, students[key], rtol=0, atol=0, msg=key)

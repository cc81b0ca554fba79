"""`--ckpt_path last` with nothing to resume is refused naming where it looked; `auto` resumes when it can and
starts afresh otherwise."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from lightning_kd.cli import main, run_cli
from tests.cli_fixtures import classification_data_args, quick_trainer_args, write_classification_csvs, write_models


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume_check_assets")
    return {**write_models(root), **write_classification_csvs(root)}


def _args(assets: dict, root: Path, *extra: str, steps: int = 2) -> list[str]:
    teacher = assets["teacher_classification"]
    return ["fit", "--model=KD", f"--model.teacher={teacher}", "--model.student_init=teacher_uniform", "--model.student_layers=3",
            *classification_data_args(teacher, assets), *quick_trainer_args(root, steps=steps), *extra]


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        ((), "The checkpoint callback writes no last.ckpt (save_last is off, as in Lightning's default): add --config "
             "configs/trainer/checkpointing.yaml"),
        (("--checkpoint=lightning_kd.fault.PeriodicCheckpoint",), "Check --trainer.default_root_dir (is it the earlier run's?)."),
    ],
    ids=["no_checkpointing_preset", "preset_but_nothing_yet"],
)
def test_last_with_nothing_to_resume_is_refused_naming_where_it_looked(assets, tmp_path, monkeypatch, capsys, extra, why):
    monkeypatch.setattr(sys, "argv", ["lightning-kd", *_args(assets, tmp_path, *extra, "--ckpt_path", "last")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err[-3000:]
    assert f"lightning-kd: error: --ckpt_path last: there is nothing to resume: no last.ckpt in {tmp_path / 'checkpoints'}." in err
    assert why in err and "--ckpt_path auto" in err
    assert not (tmp_path / "student").exists()


def test_auto_starts_afresh_then_resumes(assets, tmp_path):
    preset = ("--checkpoint=lightning_kd.fault.PeriodicCheckpoint", "--checkpoint.every_n_train_steps=1", "--ckpt_path=auto")
    first = run_cli(_args(assets, tmp_path, *preset, steps=2))
    assert first.trainer.ckpt_path is None and first.trainer.global_step == 2
    second = run_cli(_args(assets, tmp_path, *preset, steps=3))
    assert Path(second.trainer.ckpt_path).name == "last.ckpt" and second.trainer.global_step == 3

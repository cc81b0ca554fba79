"""``python -m lightning_kd.export``: a student exported from a checkpoint is the student ``fit`` exports,
for a plain method (KD) and for one whose export rewrites the vocabulary and tokenizer (VocabDistil)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lightning_kd.cli import run_cli
from lightning_kd.export import main as export_main
from tests.cli_fixtures import classification_data_args, pretrain_data_args, quick_trainer_args, write_cli_assets

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return write_cli_assets(tmp_path_factory.mktemp("export_command_assets"))


def method_args(assets: dict, method: str) -> list[str]:
    if method == "KD":
        teacher = assets["teacher_classification"]
        return ["--model=lightning_kd.methods.KD", f"--model.teacher={teacher}", "--model.student_init=teacher_uniform",
                "--model.student_layers=3", *classification_data_args(teacher, assets)]
    teacher = assets["teacher_mlm"]
    return ["--model=lightning_kd.methods.VocabDistil", f"--model.teacher={teacher}", "--model.student_init=teacher_first",
            "--model.student_layers=2", "--model.size_multiple=16", *pretrain_data_args(teacher, assets["corpus"])]


def fit(assets: dict, root: Path, method: str) -> Path:
    """A 2-step fit with a checkpoint at its last step; returns the directory ``fit`` exported to."""
    run_cli(["fit", *method_args(assets, method), *quick_trainer_args(root, steps=2),
             "--checkpoint=lightning_kd.fault.PeriodicCheckpoint", "--checkpoint.every_n_train_steps=2"])
    return root / "student"


def same_export(ours: Path, theirs: Path) -> None:
    files = sorted(p.name for p in ours.iterdir())
    assert files == sorted(p.name for p in theirs.iterdir())
    for name in files:
        if name == "model.safetensors":
            a, b = load_file(ours / name), load_file(theirs / name)
            assert a.keys() == b.keys()
            for key in a:
                torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
        elif name == "config.json":
            # transformers records problem_type at the student's first forward with labels; the student
            # rebuilt for the export ran none (it is inferred again the same way at the next forward).
            a, b = (json.loads((d / name).read_text()) for d in (ours, theirs))
            b.pop("problem_type", None)
            assert a == b
        else:
            assert (ours / name).read_bytes() == (theirs / name).read_bytes(), name


@pytest.mark.parametrize("method", ["KD", "VocabDistil"])
def test_export_from_a_checkpoint_equals_the_export_at_the_end_of_fit(assets, tmp_path, method):
    exported_by_fit = fit(assets, tmp_path, method)
    target = tmp_path / "from_checkpoint"
    export_main(["--config", str(tmp_path / "config.yaml"), "--ckpt_path", str(tmp_path / "checkpoints" / "last.ckpt"), "--dirpath", str(target)])
    same_export(target, exported_by_fit)
    if method == "VocabDistil":  # the compressed vocabulary and its map came back from the checkpoint
        teacher_rows = json.loads((assets["teacher_mlm"] / "config.json").read_text())["vocab_size"]
        assert json.loads((target / "config.json").read_text())["vocab_size"] < teacher_rows
        assert (target / "vocab_map.json").is_file()


def test_the_command_refuses_the_run_directory_and_names_intact_checkpoints_for_a_truncated_one(assets, tmp_path, capsys):
    fit(assets, tmp_path, "KD")
    config, checkpoints = str(tmp_path / "config.yaml"), tmp_path / "checkpoints"
    with pytest.raises(SystemExit) as exit_info:
        export_main(["--config", config, "--ckpt_path", str(checkpoints / "last.ckpt"), "--dirpath", str(tmp_path)])
    assert exit_info.value.code == 2 and "holds this run's checkpoint directory" in capsys.readouterr().err

    last = checkpoints / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(SystemExit):
        export_main(["--config", config, "--ckpt_path", str(last), "--dirpath", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert f"Checkpoint {last} is truncated or corrupt" in err and "newest first: epoch=0-step=2.ckpt" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_the_documented_command_line_runs(assets, tmp_path):
    fit(assets, tmp_path, "KD")
    command = [sys.executable, "-m", "lightning_kd.export", "--config", str(tmp_path / "config.yaml"),
               "--ckpt_path", str(tmp_path / "checkpoints" / "last.ckpt"), "--dirpath", str(tmp_path / "cmd")]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    same_export(tmp_path / "cmd", tmp_path / "student")

"""Kill-and-resume equality: a ``lightning-kd fit`` SIGKILLed mid-epoch and resumed with ``--ckpt_path``
ends with exactly the student of a run that was never interrupted.

The method is Annealing-KD with its TemperatureSchedule (a schedule driven by the global step), a
linear warm-up/decay learning rate, dropout in teacher and student, a seeded shuffle and an epoch
boundary in the middle: data order, schedules, optimizer state and dropout must all line up.
The killed run is a real subprocess; the reference and resumed runs run in this process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_kd.cli import run_cli
from lightning_kd.fault.atomic_io import temporary_files
from tests.cli_fixtures import classification_data_args, quick_trainer_args, write_classification_csvs, write_models

ROOT = Path(__file__).resolve().parents[2]
STEPS = 12  # 24 rows / batch 4 = 6 steps per epoch: two epochs
EVERY = 2


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("fault_assets")
    return {**write_models(root), **write_classification_csvs(root)}


def fit_args(assets: dict, root: Path, *extra: str) -> list[str]:
    teacher = assets["teacher_classification"]  # with dropout (0.1), like every real BERT
    return [
        "fit",
        "--seed_everything=7",
        "--model=lightning_kd.methods.AnnealingKD",
        f"--model.teacher={teacher}",
        "--model.student_init=teacher_uniform",
        "--model.student_layers=3",
        "--model.learning_rate=1e-3",
        "--model.warmup_ratio=0.25",
        "--trainer.callbacks+=lightning_kd.callbacks.TemperatureSchedule",
        "--trainer.callbacks.max_temperature=4",
        *classification_data_args(teacher, assets),
        *quick_trainer_args(root, steps=STEPS),
        "--trainer.max_epochs=5",
        "--checkpoint=lightning_kd.fault.PeriodicCheckpoint",
        f"--checkpoint.every_n_train_steps={EVERY}",
        *extra,
    ]


def run_killed(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "lightning_kd", *args], check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == -signal.SIGKILL, f"the run should have been SIGKILLed:\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def uninterrupted(assets, tmp_path_factory):
    cli = run_cli(fit_args(assets, tmp_path_factory.mktemp("uninterrupted")))
    assert cli.trainer.global_step == STEPS
    return {k: v.clone() for k, v in cli.model.student.state_dict().items()}


def _global_step(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=False)["global_step"]


@pytest.mark.parametrize(
    "crash, expected_resume_step, ckpt_path",
    [
        # Mid-epoch 2, one step after the checkpoint at 8: step 9's update is lost and redone. ``last``
        # is looked up in <default_root_dir>/checkpoints, which is the same for every launch.
        (["--trainer.callbacks+=tests.fault.helpers.KillAfterStep", "--trainer.callbacks.step=9"], 8, "last"),
        # Inside the write of the second last.ckpt (step 4): the one from step 2 must survive whole.
        (["--trainer.plugins=tests.fault.helpers.DieDuringWrite", "--trainer.plugins.write=2"], 2, "checkpoints/last.ckpt"),
    ],
    ids=["killed_after_a_checkpoint", "killed_during_a_checkpoint_write"],
)
def test_killed_run_resumes_to_the_uninterrupted_weights(assets, uninterrupted, tmp_path, crash, expected_resume_step, ckpt_path):
    run_killed(fit_args(assets, tmp_path, *crash))
    directory = tmp_path / "checkpoints"
    last = directory / "last.ckpt"
    assert _global_step(last) == expected_resume_step
    if "DieDuringWrite" in crash[0]:
        assert len(temporary_files(directory, "last.ckpt")) == 1, "the kill left its half-written temporary"

    resume_from = ckpt_path if ckpt_path == "last" else tmp_path / ckpt_path
    resumed = run_cli(fit_args(assets, tmp_path, f"--ckpt_path={resume_from}"))
    # Otherwise the test would pass vacuously: a fresh start with the same seed also matches.
    assert Path(resumed.trainer.ckpt_path) == last, "the run must have resumed, not started over"
    assert resumed.trainer.global_step == STEPS
    assert temporary_files(directory) == [], "the resumed run removed the stale temporary"
    assert _global_step(last) == STEPS
    state = resumed.model.student.state_dict()
    for key, value in uninterrupted.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=1e-6, msg=key)


def test_without_reseeding_the_resumed_dropout_differs(assets, tmp_path):
    """The control that shows the equality above is not trivial: with one global RNG stream (Lightning's
    default; it does not checkpoint RNG states) the resumed run draws other dropout masks."""
    no_reseed = "--checkpoint.reseed_every_batch=false"
    reference = run_cli(fit_args(assets, tmp_path / "reference", no_reseed)).model.student.state_dict()
    run_killed(fit_args(assets, tmp_path / "run", no_reseed, "--trainer.callbacks+=tests.fault.helpers.KillAfterStep", "--trainer.callbacks.step=9"))
    resumed = run_cli(fit_args(assets, tmp_path / "run", no_reseed, "--ckpt_path=last")).model.student.state_dict()
    largest = max((resumed[k] - v).abs().max().item() for k, v in reference.items())
    assert largest > 1e-4

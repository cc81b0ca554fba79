"""After a NaN, the checkpoint named as the last good one really recovers: the checkpoints are tried on the batch that
failed, those written after the loss began to spike are passed over, and the printed command trains on."""

from __future__ import annotations

import math
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_kd.cli import run_cli
from lightning_kd.fault import NonFiniteLossError, NonFiniteRecovery
from tests.cli_fixtures import classification_data_args, quick_trainer_args, write_classification_csvs, write_models

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("recovery_assets")
    return {**write_models(root), **write_classification_csvs(root)}


def fit_args(assets: dict, root: Path, *extra: str) -> list[str]:
    teacher = assets["teacher_classification"]
    return [
        "fit", "--seed_everything=3", "--model=KD", f"--model.teacher={teacher}", "--model.student_init=teacher_uniform",
        "--model.student_layers=3", *classification_data_args(teacher, assets), *quick_trainer_args(root, steps=12),
        "--checkpoint=lightning_kd.fault.PeriodicCheckpoint", "--checkpoint.every_n_train_steps=1", *extra,
    ]


def command(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("LIGHTNING_KD_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "lightning_kd", *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


def test_an_exploding_learning_rate_names_a_checkpoint_from_before_the_divergence_and_its_command_trains_on(assets, tmp_path):
    # Three healthy steps at 1e-3 (a checkpoint after each), then the run is resumed at a rate of 1e4: the weights
    # grow for two steps (finite, huge losses) before the loss turns NaN at step 6.
    run_cli([*fit_args(assets, tmp_path, "--model.learning_rate=1e-3"), "--trainer.max_steps=3"])
    exploding = [*fit_args(assets, tmp_path, "--model.learning_rate=1e4"), "--ckpt_path=last",
                 "--trainer.callbacks+=lightning_kd.fault.ResetOptimizerOnResume"]
    stopped = command(exploding)
    assert stopped.returncode == 3, stopped.stderr[-3000:]
    report = stopped.stderr[stopped.stderr.index("lightning-kd: error: "):].rstrip().splitlines()
    text = "\n".join(report)
    assert "Traceback" not in stopped.stderr
    assert "The loss spiked before it became non-finite (step 4: " in text
    good = tmp_path / "checkpoints" / "epoch=0-step=3.ckpt"
    assert f"Last good checkpoint: {good} (step 3): its weights give a finite loss" in text
    assert "last.ckpt (step 6): loss nan" in text and "but after the first loss spike" in text
    assert report[-2] == "To resume with a lower learning rate, rerun the same command with these arguments added:"
    printed = shlex.split(report[-1])
    assert printed[:3] == ["--ckpt_path", str(good), "--trainer.callbacks+=lightning_kd.fault.ResetOptimizerOnResume"]
    rate = float(printed[-1].split("=", 1)[1])
    assert rate < 1e4 / 4, "the rate is capped at a tenth of the weights' RMS"

    # The printed command, as printed: the same command plus those arguments.
    resumed = command([*exploding[:-2], *printed, "--trainer.max_steps=8"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "ResetOptimizerOnResume: resumed at step 3" in resumed.stderr + resumed.stdout
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 8, "every step's loss was finite (a NaN would have stopped the run with status 3)"
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())
    assert (tmp_path / "student" / "config.json").is_file()


def test_when_no_checkpoint_recovers_it_says_so_and_how_to_start_again(assets, tmp_path):
    # At 1e6 the first AdamW step moves every weight by about 1e6: the only checkpoint already holds those weights.
    with pytest.raises(NonFiniteLossError) as error:
        run_cli(fit_args(assets, tmp_path, "--model.learning_rate=1e6"))
    lines = str(error.value).splitlines()
    assert any(line.startswith("No checkpoint recovers: none of those gives a finite loss on that batch.") for line in lines)
    assert "(its training examples: " in str(error.value)
    assert lines[-2] == "To start again with a lower learning rate, rerun the same command without --ckpt_path, with this argument added:"
    rate = float(lines[-1].split("=", 1)[1])
    assert rate <= 0.01
    cli = run_cli([*fit_args(assets, tmp_path, lines[-1].strip()), "--trainer.max_steps=3"])
    assert cli.trainer.global_step == 3


def test_spikes_are_steps_far_above_the_recent_median():
    recovery = NonFiniteRecovery(spike_factor=10, spike_window=3)
    for step, loss in enumerate([0.7, 0.69, 0.72, 5.0, 0.7, 80.0, 1e5]):
        recovery.record(step, loss)
    assert [(s.step, s.loss) for s in recovery.spikes] == [(5, 80.0), (6, 1e5)]
    assert math.isclose(recovery.spikes[0].median, 0.72)  # of 0.72, 5.0 and 0.7
    with pytest.raises(ValueError, match="spike_factor > 1"):
        NonFiniteRecovery(spike_factor=1)

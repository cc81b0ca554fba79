"""An interrupted fit exits non-zero (SIGTERM 143, Ctrl-C 130), exports nothing and names the checkpoint to
resume from; the exit-status mapping itself is checked without a process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from pytorch_lightning.utilities.exceptions import SIGTERMException

from lightning_kd.fault.interrupted import exit_if_interrupted, interruption_signal
from tests.cli_fixtures import classification_data_args, quick_trainer_args, write_classification_csvs, write_models

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("interrupted_assets")
    return {**write_models(root), **write_classification_csvs(root)}


def fit_args(assets: dict, root: Path, *extra: str) -> list[str]:
    teacher = assets["teacher_classification"]
    return [
        "fit",
        "--model=lightning_kd.methods.KD",
        f"--model.teacher={teacher}",
        "--model.student_init=teacher_uniform",
        "--model.student_layers=3",
        *classification_data_args(teacher, assets),
        *quick_trainer_args(root, steps=12),
        *extra,
    ]


def run_and_signal(args: list[str], marker: Path, signum: int) -> subprocess.CompletedProcess:
    """Start ``python -m lightning_kd`` and send it ``signum`` once it pauses mid-training (PauseAfterStep)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    # A job started in the background of a non-interactive shell inherits SIGINT as *ignored*, and
    # Python then installs no KeyboardInterrupt handler: give the child the default disposition.
    process = subprocess.Popen([sys.executable, "-m", "lightning_kd", *args], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), "the run never reached the pause"
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.mark.slow
@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_a_signalled_fit_exits_non_zero_and_names_the_checkpoint_to_resume_from(assets, tmp_path, signum, status):
    marker = tmp_path / "paused"
    result = run_and_signal(
        fit_args(assets, tmp_path, "--checkpoint=lightning_kd.fault.PeriodicCheckpoint", "--checkpoint.every_n_train_steps=2",
                 "--trainer.callbacks+=tests.fault.helpers.PauseAfterStep", "--trainer.callbacks.step=3",
                 f"--trainer.callbacks.marker={marker}"),
        marker, signum,
    )
    assert result.returncode == status, result.stderr[-3000:]
    name = signal.Signals(signum).name
    assert f"interrupted by {name} at step 3 and is incomplete: no student was exported (exit status {status})" in result.stderr
    named = result.stderr.split("--ckpt_path ")[1].split()[0]
    assert Path(named) == tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(named, weights_only=False)["global_step"] == 2, "the newest checkpoint written before the signal"
    assert not (tmp_path / "student").exists()


@pytest.mark.slow
def test_without_checkpoints_the_message_says_how_to_get_them(assets, tmp_path):
    marker = tmp_path / "paused"
    result = run_and_signal(
        fit_args(assets, tmp_path, "--trainer.enable_checkpointing=false", "--trainer.callbacks+=tests.fault.helpers.PauseAfterStep",
                 "--trainer.callbacks.step=1", f"--trainer.callbacks.marker={marker}"),
        marker, signal.SIGTERM,
    )
    assert result.returncode == 143, result.stderr[-3000:]
    assert "no checkpoint was written; add --config configs/trainer/checkpointing.yaml" in result.stderr


def test_lightnings_interrupt_exits_become_signal_statuses():
    with pytest.raises(SystemExit) as sigterm, exit_if_interrupted():
        raise SIGTERMException()  # what Lightning raises after SIGTERM: a SystemExit with code None (status 0)
    assert sigterm.value.code == 143

    with pytest.raises(SystemExit) as sigint, exit_if_interrupted():
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            sys.exit(1)  # what Lightning does after Ctrl-C
    assert sigint.value.code == 130

    for code in (0, 2, None):  # any other exit passes through unchanged
        with pytest.raises(SystemExit) as other, exit_if_interrupted():
            sys.exit(code)
        assert other.value.code == code
    assert interruption_signal(ValueError()) is None

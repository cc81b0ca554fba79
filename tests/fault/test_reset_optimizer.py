"""Resuming after a NaN stop with a lower learning rate: ResetOptimizerOnResume keeps weights and data position
but rebuilds optimizer and schedule from the current config, at the resumed step; a plain resume keeps the old rate."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import pytest
import torch

from lightning_kd.cli import run_cli
from lightning_kd.core.optim import lr_lambda
from lightning_kd.fault import NonFiniteLossError
from tests.cli_fixtures import classification_data_args, quick_trainer_args, write_classification_csvs, write_models

STEPS, WARMUP, PEAK = 10, 2, 1e-3


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("reset_optimizer_assets")
    return {**write_models(root), **write_classification_csvs(root)}


def fit_args(assets: dict, root: Path, *extra: str) -> list[str]:
    teacher = assets["teacher_classification"]
    return [
        "fit",
        "--seed_everything=3",
        "--model=lightning_kd.methods.KD",
        f"--model.teacher={teacher}",
        "--model.student_init=teacher_uniform",
        "--model.student_layers=3",
        f"--model.learning_rate={PEAK}",
        f"--model.warmup_ratio={WARMUP / STEPS}",
        *classification_data_args(teacher, assets),
        *quick_trainer_args(root, steps=STEPS),
        "--checkpoint=lightning_kd.fault.PeriodicCheckpoint",
        "--checkpoint.every_n_train_steps=2",
        "--trainer.callbacks+=tests.fault.helpers.RecordTraining",
        *extra,
    ]


def recorder(cli):
    return next(c for c in cli.trainer.callbacks if type(c).__name__ == "RecordTraining")


@pytest.fixture(scope="module")
def stopped_by_nan(assets, tmp_path_factory) -> tuple[Path, list[str]]:
    """The last good checkpoint of a run stopped by a NaN loss at step 4, and the resume arguments its message prints."""
    root = tmp_path_factory.mktemp("nan_run")
    with pytest.raises(NonFiniteLossError) as error:
        run_cli(fit_args(assets, root, "--trainer.callbacks+=tests.fault.helpers.PoisonLossAt", "--trainer.callbacks.step=4"))
    lines = str(error.value).splitlines()
    assert lines[-2] == "To resume with a lower learning rate, rerun the same command with these arguments added:"
    assert lines[-1] == (
        "  --ckpt_path last --trainer.callbacks+=lightning_kd.fault.ResetOptimizerOnResume --model.init_args.learning_rate=0.00025"
    )
    return root / "checkpoints" / "last.ckpt", shlex.split(lines[-1])


def resume(assets: dict, root: Path, checkpoint: Path, *args: str):
    """Run ``args`` in ``root`` whose checkpoint directory holds ``checkpoint`` as its last.ckpt (what `last` resumes)."""
    (root / "checkpoints").mkdir(parents=True, exist_ok=True)
    shutil.copy(checkpoint, root / "checkpoints" / "last.ckpt")
    return run_cli(fit_args(assets, root, *args))


def expected_rate(peak: float, step: int) -> float:
    return peak * lr_lambda("linear", WARMUP, STEPS)(step)


def test_the_printed_resume_trains_on_at_the_new_rate_from_the_same_weights_and_batch(assets, stopped_by_nan, tmp_path):
    checkpoint, printed = stopped_by_nan
    saved = torch.load(checkpoint, weights_only=False)
    cli = resume(assets, tmp_path, checkpoint, *printed)
    first, losses = recorder(cli).first, recorder(cli).losses

    assert cli.trainer.global_step == STEPS and len(losses) == STEPS - 4
    assert all(torch.isfinite(torch.tensor(losses)))
    assert (first["global_step"], first["batch_idx"]) == (4, 4), "data position kept: the 5th batch of epoch 0"
    for key, value in saved["state_dict"].items():
        torch.testing.assert_close(first["weights"][key], value, rtol=0, atol=0, msg=key)
    # The schedule continues at step 4 (past the warm-up) with the new peak, and AdamW starts afresh.
    assert first["initial_lr"] == [0.00025, 0.00025]
    assert first["lr"] == pytest.approx([expected_rate(0.00025, 4)] * 2, rel=1e-12)
    assert first["adam_steps"] == []
    group = cli.trainer.optimizers[0].param_groups[0]
    assert group["initial_lr"] == 0.00025 and group["lr"] == pytest.approx(expected_rate(0.00025, STEPS), abs=1e-12)


def test_a_plain_resume_brings_the_old_rate_back(assets, stopped_by_nan, tmp_path):
    """The control: without the option, the lower rate on the command line is overwritten by the checkpoint's optimizer."""
    checkpoint, _ = stopped_by_nan
    cli = resume(assets, tmp_path, checkpoint, "--ckpt_path=last", "--model.init_args.learning_rate=0.00025", "--trainer.max_steps=5")
    first = recorder(cli).first
    assert cli.model.hparams.learning_rate == 0.00025
    assert first["initial_lr"] == [PEAK, PEAK] and first["lr"] == pytest.approx([expected_rate(PEAK, 4)] * 2, rel=1e-12)
    assert first["adam_steps"] == [4.0]


def test_relaunching_the_reset_run_resumes_it_exactly_and_a_new_rate_resets_again(assets, stopped_by_nan, tmp_path):
    checkpoint, printed = stopped_by_nan
    resume(assets, tmp_path / "reset", checkpoint, *printed)
    eight = tmp_path / "reset" / "checkpoints" / "epoch=1-step=8.ckpt"  # written by the run that reset at step 4

    first = recorder(resume(assets, tmp_path / "again", eight, *printed)).first
    assert first["adam_steps"] == [4.0], "restored: AdamW took steps 5 to 8 after the reset"
    assert first["initial_lr"] == [0.00025, 0.00025]

    first = recorder(resume(assets, tmp_path / "lower", eight, *printed[:-1], "--model.init_args.learning_rate=0.0001")).first
    assert first["adam_steps"] == [] and first["initial_lr"] == [0.0001, 0.0001]


def test_a_checkpoint_file_path_keeps_the_command_line_rate(assets, stopped_by_nan, tmp_path):
    """Plain LightningCLI 2.6 puts a checkpoint file's model arguments over the command line's; lightning-kd does not."""
    checkpoint, printed = stopped_by_nan
    cli = run_cli(fit_args(assets, tmp_path, f"--ckpt_path={checkpoint}", *printed[2:], "--trainer.max_steps=5"))
    assert cli.model.hparams.learning_rate == 0.00025
    assert recorder(cli).first["initial_lr"] == [0.00025, 0.00025]


def test_the_same_settings_say_only_the_optimizer_state_is_reset(assets, stopped_by_nan, tmp_path):
    checkpoint, printed = stopped_by_nan
    with pytest.warns(UserWarning, match="optimizer settings are the checkpoint's own .*learning_rate=0.001.*only the optimizer"):
        run_cli(fit_args(assets, tmp_path, f"--ckpt_path={checkpoint}", *printed[2:-1], "--trainer.max_steps=5"))

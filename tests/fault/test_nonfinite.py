"""A NaN/inf loss stops training before the optimizer step, with a message that says where, what and what next,
and the checkpoints on disk stay those of finite, completed steps."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lightning_kd.cli import run_cli
from lightning_kd.fault import NonFiniteLossError, check_finite_loss
from tests.cli_fixtures import classification_data_args, quick_trainer_args, write_classification_csvs, write_models


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("nonfinite_assets")
    return {**write_models(root), **write_classification_csvs(root)}


def test_nan_loss_stops_before_the_update_and_keeps_the_last_good_checkpoint(assets, tmp_path):
    teacher = assets["teacher_classification"]
    cli = run_cli(
        [  # run=False: no subcommand; fit is called below so the error can be caught with the CLI in hand
            "--model=lightning_kd.methods.KD",
            f"--model.teacher={teacher}",
            "--model.student_init=teacher_uniform",
            "--model.student_layers=3",
            *classification_data_args(teacher, assets),
            *quick_trainer_args(tmp_path, steps=10),
            "--checkpoint=lightning_kd.fault.PeriodicCheckpoint",
            "--checkpoint.every_n_train_steps=2",
            "--trainer.callbacks+=tests.fault.helpers.PoisonLossAt",
            "--trainer.callbacks.step=4",
        ],
        run=False,
    )
    with pytest.raises(NonFiniteLossError) as error:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)

    directory = tmp_path / "checkpoints"
    last = directory / "last.ckpt"
    message = str(error.value)
    assert "global step 4" in message and "weights are those after step 4" in message
    assert "loss=nan" in message and "soft=nan" in message and "Non-finite: " in message
    assert f"Last good checkpoint: {last} (step 4)" in message and f"--ckpt_path {last}" in message
    assert "learning_rate" in message and "inputs and labels" in message and "gradient_clip_val" in message

    assert sorted(p.name for p in directory.iterdir()) == ["epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt", "last.ckpt"]
    saved = torch.load(last, weights_only=False)
    assert saved["global_step"] == 4
    step4 = torch.load(directory / "epoch=0-step=4.ckpt", weights_only=False)["state_dict"]
    in_memory = cli.model.state_dict()
    for key, value in saved["state_dict"].items():
        assert torch.isfinite(value).all(), key
        torch.testing.assert_close(value, step4[key], rtol=0, atol=0, msg=key)
        # No optimizer step was taken on the NaN loss: the live weights are still step 4's.
        torch.testing.assert_close(in_memory[key], value, rtol=0, atol=0, msg=key)
    assert not (tmp_path / "student").exists(), "a failed run exports no student"


def _trainer(precision: str = "32-true", reduced: bool | None = None, checkpoints=()) -> SimpleNamespace:
    strategy = SimpleNamespace(reduce_boolean_decision=lambda decision, all=True: decision if reduced is None else reduced)
    optimizer = SimpleNamespace(param_groups=[{"lr": 3e-4}])
    return SimpleNamespace(
        global_step=17, current_epoch=2, precision=precision, strategy=strategy, optimizers=[optimizer], checkpoint_callbacks=list(checkpoints)
    )


def _module(trainer) -> SimpleNamespace:
    return SimpleNamespace(_trainer=trainer)


def test_finite_losses_pass_and_infinite_ones_are_caught():
    finite = {"hard": torch.tensor(0.5), "loss": torch.tensor(0.5)}
    check_finite_loss(_module(_trainer()), finite, batch_idx=0)
    with pytest.raises(NonFiniteLossError, match=r"hard=inf.*Non-finite: hard"):
        check_finite_loss(_module(_trainer()), {"hard": torch.tensor(float("inf")), "loss": torch.tensor(float("inf"))}, batch_idx=3)
    with pytest.raises(NonFiniteLossError, match="global step 0"):  # no trainer: compute_losses used directly
        check_finite_loss(_module(None), {"loss": torch.tensor(float("nan"))}, batch_idx=0)


def test_every_rank_stops_when_another_rank_sees_a_nan():
    finite = {"hard": torch.tensor(0.5), "loss": torch.tensor(0.5)}
    with pytest.raises(NonFiniteLossError, match="Another rank's loss was non-finite"):
        check_finite_loss(_module(_trainer(reduced=True)), finite, batch_idx=0)


def test_message_tailors_the_fixes_and_the_checkpoint_hint(tmp_path):
    nan = {"soft": torch.tensor(float("nan")), "loss": torch.tensor(float("nan"))}
    with pytest.raises(NonFiniteLossError) as fp16:
        check_finite_loss(_module(_trainer(precision="16-mixed")), nan, batch_idx=5)
    text = str(fp16.value)
    assert "bf16-mixed instead of 16-mixed" in text and "current rate is 0.0003" in text
    assert "global step 17 (epoch 2, batch 5)" in text
    assert "No checkpoint callback is configured" in text and "configs/trainer/checkpointing.yaml" in text

    newest = Path(tmp_path / "epoch=0-step=16.ckpt")
    newest.write_bytes(b"x")
    callback = SimpleNamespace(last_model_path="", best_model_path=str(newest), best_k_models={str(newest): 0.0})
    with pytest.raises(NonFiniteLossError) as bf16:
        check_finite_loss(_module(_trainer(precision="bf16-mixed", checkpoints=[callback])), nan, batch_idx=5)
    # Without a NonFiniteRecovery callback nothing is tried on the batch: the newest checkpoint is named, unchecked.
    assert "bf16-mixed instead" not in str(bf16.value) and f"Newest checkpoint: {newest}" in str(bf16.value)
    assert "not checked on this batch" in str(bf16.value)

"""configs/trainer/checkpointing.yaml composes with the other trainer presets and a method config that
has its own callbacks, in either order; every CLI run writes its checkpoints through AtomicCheckpointIO."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from lightning_kd.callbacks import TemperatureSchedule
from lightning_kd.cli import run_cli
from lightning_kd.fault import AtomicCheckpointIO, PeriodicCheckpoint
from tests.cli_fixtures import classification_data_args, quick_trainer_args, quick_trainer_section, write_classification_csvs, write_models

ROOT = Path(__file__).resolve().parents[2]
PRESET = ROOT / "configs/trainer/checkpointing.yaml"
METHOD = ROOT / "configs/finetune/annealing_kd/minilm_l3_from_minilm_l6.yaml"


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("preset_assets")
    return {**write_models(root), **write_classification_csvs(root)}


def _tiny_method_config(assets: dict, root: Path) -> Path:
    """The shipped Annealing-KD config with tiny models/data, a 4-step trainer and a trainer.callbacks list
    (the schedule the method would attach by default, listed as a config that overrides it does)."""
    document = yaml.safe_load(METHOD.read_text())
    teacher = str(assets["teacher_classification"])
    document["model"]["init_args"]["teacher"] = teacher
    document["data"]["init_args"].update(
        task="text-classification", tokenizer=teacher, train_file=str(assets["train"]), validation_file=str(assets["validation"]),
        text_columns=["text"], label_column="label", batch_size=4, max_length=16,
    )
    callbacks = [{"class_path": "lightning_kd.callbacks.TemperatureSchedule", "init_args": {"max_temperature": 7}}]
    document["trainer"] = quick_trainer_section(root, callbacks, steps=4)
    document["export"] = {"dirpath": str(root / "student")}
    path = root / "method.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.mark.parametrize("preset_first", [True, False], ids=["preset_before_method", "preset_after_method"])
def test_preset_composes_with_a_method_config_that_lists_callbacks(assets, tmp_path, preset_first):
    method = _tiny_method_config(assets, tmp_path)
    configs = [PRESET, method] if preset_first else [method, PRESET]
    args = ["fit", "--config", str(ROOT / "configs/trainer/cpu.yaml")]
    for config in configs:
        args += ["--config", str(config)]
    cli = run_cli([*args, "--checkpoint.every_n_train_steps=2"])
    kinds = [type(c) for c in cli.trainer.callbacks]
    assert TemperatureSchedule in kinds and PeriodicCheckpoint in kinds, kinds
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    directory = tmp_path / "checkpoints"
    assert sorted(p.name for p in directory.iterdir()) == ["epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt", "last.ckpt"]
    assert torch.load(directory / "last.ckpt", weights_only=False)["global_step"] == 4


def _kd_args(assets: dict, root: Path, *extra: str) -> list[str]:
    teacher = assets["teacher_classification"]
    return [
        "--model=lightning_kd.methods.KD", f"--model.teacher={teacher}", "--model.student_init=teacher_uniform",
        "--model.student_layers=2", *classification_data_args(teacher, assets), *quick_trainer_args(root, steps=1), *extra,
    ]


def test_without_the_preset_no_checkpoint_callback_is_added(assets, tmp_path):
    cli = run_cli(_kd_args(assets, tmp_path, "--trainer.enable_checkpointing=false"), run=False)
    assert not any(isinstance(c, PeriodicCheckpoint) for c in cli.trainer.callbacks)
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_a_checkpoint_io_given_in_trainer_plugins_is_kept(assets, tmp_path):
    cli = run_cli(_kd_args(assets, tmp_path, "--trainer.plugins=lightning_fabric.plugins.TorchCheckpointIO"), run=False)
    assert type(cli.trainer.strategy.checkpoint_io) is TorchCheckpointIO


@pytest.mark.parametrize("bad, complaint", [({"every_n_train_steps": 0}, "every_n_train_steps must be >= 1"), ({"save_top_k": 3}, "no metric to rank")])
def test_bad_settings_are_refused_with_the_fix(bad, complaint):
    with pytest.raises(ValueError, match=complaint):
        PeriodicCheckpoint(**bad)

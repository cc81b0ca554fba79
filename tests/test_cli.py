"""The `lightning-kd` command: fit/validate/test, export, clear errors for bad input, resume."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from lightning_kd.cli import run_cli as main
from tests.cli_fixtures import (
    classification_data_args,
    pretrain_data_args,
    quick_trainer_args,
    write_cli_assets,
)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return write_cli_assets(tmp_path_factory.mktemp("cli_assets"))


def _kd_args(assets, root, steps=2, extra=(), teacher_key="teacher_classification"):
    teacher = assets[teacher_key]
    return [
        "--model=lightning_kd.methods.KD",
        f"--model.teacher={teacher}",
        "--model.student_init=teacher_uniform",
        "--model.student_layers=3",
        "--model.prediction.temperature=2.0",
        *classification_data_args(teacher, assets),
        *quick_trainer_args(root, steps),
        *extra,
    ]


def test_fit_exports_a_plain_hf_student_and_links_data_to_model(assets, tmp_path):
    cli = main(["fit", *_kd_args(assets, tmp_path)])
    assert cli.model.num_labels == 2 and cli.model.task_head == "sequence_classification"
    assert cli.model.tokenizer_source == str(assets["teacher_classification"])
    student = AutoModelForSequenceClassification.from_pretrained(tmp_path / "student")
    assert student.config.num_hidden_layers == 3
    assert (tmp_path / "student" / "tokenizer.json").exists() or (tmp_path / "student" / "vocab.txt").exists()


def test_pretraining_stage_is_decided_by_the_data(assets, tmp_path):
    teacher = assets["teacher_mlm"]
    cli = main(
        [
            "fit",
            "--model=lightning_kd.methods.KD",
            f"--model.teacher={teacher}",
            "--model.student_init=teacher_first",
            "--model.student_layers=2",
            *pretrain_data_args(teacher, assets["corpus"]),
            *quick_trainer_args(tmp_path),
        ]
    )
    assert cli.model.task_head == "masked_lm"
    assert (tmp_path / "student" / "config.json").exists()


@pytest.mark.parametrize("subcommand", ["validate", "test"])
def test_validate_and_test_report_task_metrics(assets, tmp_path, subcommand):
    cli = main([subcommand, *_kd_args(assets, tmp_path)])
    metrics = cli.trainer.callback_metrics
    prefix = "val/" if subcommand == "validate" else "test/"
    assert f"{prefix}accuracy" in metrics and f"{prefix}loss" in metrics


def test_unknown_config_key_is_rejected_with_its_name(assets, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["fit", *_kd_args(assets, tmp_path, extra=["--model.temprature=3"])])
    assert "temprature" in capsys.readouterr().err


def test_print_config_lists_method_knobs(assets, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *_kd_args(assets, tmp_path), "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "temperature: 2.0" in printed and "student_layers: 3" in printed


def test_missing_teacher_directory_fails_before_training(assets, tmp_path):
    args = _kd_args(assets, tmp_path)
    args[1] = f"--model.teacher={tmp_path / 'no_such_teacher'}"
    with pytest.raises((FileNotFoundError, SystemExit, ValueError)) as error:
        main(["fit", *args])
    assert "no_such_teacher" in str(error.value) or error.type is SystemExit


def test_resume_from_checkpoint_matches_an_uninterrupted_run(assets, tmp_path):
    """Stop after 3 steps (mid-epoch), resume with --ckpt_path to 6: same student as 6 steps in one go."""
    teacher = "teacher_classification_no_dropout"
    checkpointing = [
        "--trainer.callbacks+=ModelCheckpoint",
        "--trainer.callbacks.every_n_train_steps=3",
        "--trainer.callbacks.save_top_k=-1",
        f"--trainer.callbacks.dirpath={tmp_path / 'ckpt'}",
        "--trainer.max_epochs=5",
        "--seed_everything=7",
    ]
    fixed = ["--seed_everything=7", "--trainer.max_epochs=5"]
    full = main(["fit", *_kd_args(assets, tmp_path / "full", steps=6, extra=fixed, teacher_key=teacher)])
    interrupted = [*checkpointing, "--trainer.callbacks+=tests.cli_fixtures.StopAtStep", "--trainer.callbacks.step=3"]
    main(["fit", *_kd_args(assets, tmp_path / "first", steps=6, extra=interrupted, teacher_key=teacher)])
    checkpoint = next((tmp_path / "ckpt").glob("*step=3*.ckpt"))
    saved = torch.load(checkpoint, weights_only=False)
    assert not any(k.startswith("teachers.") for k in saved["state_dict"]), "the teacher must not be checkpointed"
    assert saved["lightning_kd"]["teachers"] == [str(assets[teacher])]
    resumed = main(["fit", *_kd_args(assets, tmp_path / "resumed", steps=6, extra=fixed, teacher_key=teacher), f"--ckpt_path={checkpoint}"])
    assert resumed.trainer.global_step == 6
    for key, value in full.model.student.state_dict().items():
        torch.testing.assert_close(resumed.model.student.state_dict()[key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_cpu_trainers_keep_freed_memory(assets, tmp_path, monkeypatch):
    """The CLI asks glibc to keep freed memory when the trainer runs on CPU (lightning_kd/cpu_allocator.py)."""
    calls = []
    monkeypatch.setattr("lightning_kd.distillation_cli.keep_freed_memory", lambda: calls.append(True) or True)
    main(_kd_args(assets, tmp_path, extra=["--trainer.accelerator=cpu"]), run=False)
    assert calls == [True]

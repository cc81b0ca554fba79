"""From the command line, each scheduled method fits without listing its callback (the method attaches
its paper's schedule), and a callback given with ``--trainer.callbacks+=`` drives the run instead."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from lightning_kd.callbacks import (
    ContinuationWeight,
    MobileBERTStages,
    RailKDResampling,
    SIDStages,
    TemperatureSchedule,
    TheseusReplacingRate,
)
from lightning_kd.cli import run_cli
from tests.cli_fixtures import (
    classification_data_args,
    pretrain_data_args,
    quick_trainer_args,
    write_classification_csvs,
    write_corpus,
    write_models,
)
from tests.conftest import write_tiny_tokenizer
from tests.methods.test_mobilebert import teacher as mobilebert_teacher
from tests.methods.test_mobilebert import tiny_mobilebert


@dataclass
class Case:
    """A method's CLI arguments, the callbacks it attaches (with settings), and a user's override."""

    model: list[str]
    defaults: dict[type, dict[str, object]]
    override: list[str]
    overridden: dict[type, dict[str, object]]  # the user's callback type -> the settings it must carry
    pretraining: bool = False
    untouched: list[type] = field(default_factory=list)  # defaults that stay attached beside the override


def _student_from_teacher(name: str, layers: int) -> list[str]:
    return [f"--model=lightning_kd.methods.{name}", "--model.student_init=teacher_uniform", f"--model.student_layers={layers}"]


CASES = {
    "Theseus": Case(
        _student_from_teacher("Theseus", 3),
        {TheseusReplacingRate: {"replacing_rate": 0.3, "not_replaced_steps": 0.66, "schedule": "linear"}},
        ["--trainer.callbacks+=lightning_kd.callbacks.TheseusReplacingRate", "--trainer.callbacks.replacing_rate=0.5",
         "--trainer.callbacks.schedule=constant"],
        {TheseusReplacingRate: {"replacing_rate": 0.5, "not_replaced_steps": 0.66, "schedule": "constant"}},
    ),
    "RAILKD": Case(
        _student_from_teacher("RAILKD", 3),
        {RailKDResampling: {"every_n_epochs": 1, "every_n_steps": None}},
        ["--trainer.callbacks+=lightning_kd.callbacks.RailKDResampling", "--trainer.callbacks.every_n_steps=1"],
        {RailKDResampling: {"every_n_epochs": None, "every_n_steps": 1}},
    ),
    "SID": Case(
        _student_from_teacher("SID", 2),
        {SIDStages: {"time_limit": "equal_phases", "cosine_threshold": 0.0}},
        ["--trainer.callbacks+=lightning_kd.callbacks.SIDStages", "--trainer.callbacks.time_limit=none",
         "--trainer.callbacks.cosine_threshold=5.0"],
        {SIDStages: {"time_limit": "none", "cosine_threshold": 5.0}},
    ),
    "AnnealingKD": Case(
        _student_from_teacher("AnnealingKD", 2),
        {TemperatureSchedule: {"max_temperature": 7}},
        ["--trainer.callbacks+=lightning_kd.callbacks.TemperatureSchedule", "--trainer.callbacks.max_temperature=3"],
        {TemperatureSchedule: {"max_temperature": 3}},
    ),
    "ContinuationKD": Case(
        _student_from_teacher("ContinuationKD", 2),
        {TemperatureSchedule: {"max_temperature": 10}, ContinuationWeight: {"switch_fraction": 0.666, "ramp_denominator": 1.333}},
        ["--trainer.callbacks+=lightning_kd.callbacks.TemperatureSchedule", "--trainer.callbacks.max_temperature=4"],
        {TemperatureSchedule: {"max_temperature": 4}},
        untouched=[ContinuationWeight],
    ),
    "MobileBERT": Case(
        ["--model=lightning_kd.methods.MobileBERT", "--model.student_init=random"],
        {MobileBERTStages: {"steps_per_stage": None, "total_steps": None}},
        ["--trainer.callbacks+=lightning_kd.callbacks.MobileBERTStages", "--trainer.callbacks.steps_per_stage=1"],
        {MobileBERTStages: {"steps_per_stage": 1, "total_steps": None}},
        pretraining=True,
    ),
}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("schedule_cli_assets")
    paths = {**write_models(root), **write_classification_csvs(root), "corpus": write_corpus(root)}
    for role, model in (("mobilebert_teacher", mobilebert_teacher(layers=4)), ("mobilebert_student", tiny_mobilebert(layers=2, seed=2))):
        model.save_pretrained(root / role)
        write_tiny_tokenizer(root / role)
        paths[role] = root / role
    return paths


def _args(case: Case, assets: dict, root) -> list[str]:
    if case.pretraining:
        teacher = assets["mobilebert_teacher"]
        model = [*case.model, f"--model.teacher={teacher}", f"--model.student={assets['mobilebert_student']}"]
        data = pretrain_data_args(teacher, assets["corpus"])
    else:
        teacher = assets["teacher_classification"]
        model, data = [*case.model, f"--model.teacher={teacher}"], classification_data_args(teacher, assets)
    return ["fit", *model, *data, *quick_trainer_args(root, steps=2)]


def _settings(callbacks: list, kind: type, keys) -> list[dict]:
    return [{key: getattr(c, key) for key in keys} for c in callbacks if isinstance(c, kind)]


@pytest.mark.parametrize("name", CASES)
def test_the_cli_fits_without_listing_the_schedule(name, assets, tmp_path):
    case = CASES[name]
    cli = run_cli(_args(case, assets, tmp_path))
    assert cli.trainer.global_step == 2
    for kind, settings in case.defaults.items():
        assert _settings(cli.trainer.callbacks, kind, settings) == [settings], kind.__name__


@pytest.mark.parametrize("name", CASES)
def test_a_callback_on_the_command_line_overrides_the_default(name, assets, tmp_path):
    case = CASES[name]
    cli = run_cli([*_args(case, assets, tmp_path), *case.override])
    assert cli.trainer.global_step == 2
    for kind, settings in case.overridden.items():
        assert _settings(cli.trainer.callbacks, kind, settings) == [settings], kind.__name__
    for kind in case.untouched:
        assert _settings(cli.trainer.callbacks, kind, case.defaults[kind]) == [case.defaults[kind]], kind.__name__

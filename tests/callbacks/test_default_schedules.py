"""Each scheduled method fits from Python with a bare ``pl.Trainer``: it attaches its paper's schedule,
a user's own instance of that callback type replaces the default, and a run resumed from a checkpoint
continues the attached schedule exactly."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import pytorch_lightning as pl
from torch.utils.data import DataLoader

from lightning_kd.callbacks import (
    ContinuationWeight,
    MobileBERTStages,
    RailKDResampling,
    SIDStages,
    TemperatureSchedule,
    TheseusReplacingRate,
)
from lightning_kd.callbacks.defaults import unless_configured
from lightning_kd.methods import RAILKD, SID, AnnealingKD, ContinuationKD, MobileBERT, Theseus
from tests.callbacks.runs import Recorder, _Rows, assert_same_rows, fit, stop_and_resume, tiny
from tests.methods.test_mobilebert import tiny_mobilebert


@dataclass
class Case:
    """One method: how to build it, what it records, its defaults and a user's override."""

    make: Callable[[], pl.LightningModule]
    attributes: tuple[str, ...]
    defaults: dict[type, dict[str, object]]  # attached callback type -> the settings it must carry
    steps: int
    curve: list  # per step: the recorded attribute(s) under the defaults
    user: Callable[[], list[pl.Callback]]
    user_steps: int
    user_curve: list


def _draws(values: list) -> list[int]:
    """RAIL-KD's teacher layers as draw numbers: the n-th distinct set drawn is n (0-based)."""
    seen: list = []
    for layers in values:
        if layers not in seen:
            seen.append(layers)
    return [seen.index(layers) for layers in values]


CASES = {
    "Theseus": Case(
        make=lambda: Theseus(teacher=tiny(layers=4), student_init="teacher_uniform", student_layers=2, learning_rate=1e-3),
        attributes=("replacing_rate",),
        defaults={TheseusReplacingRate: {"replacing_rate": 0.3, "not_replaced_steps": 0.66, "schedule": "linear"}},
        steps=4,  # p(i) = min(1, 0.3 + 0.7·i/(0.66·4))
        curve=[0.3, 0.3 + 0.7 / 2.64, 0.3 + 1.4 / 2.64, 1.0],
        user=lambda: [TheseusReplacingRate(0.5, 0.5, schedule="constant")],
        user_steps=4,
        user_curve=[0.5, 0.5, 1.0, 1.0],
    ),
    "RAILKD": Case(
        make=lambda: RAILKD(teacher=tiny(layers=8), student=tiny(seed=2, layers=3, hidden=16), learning_rate=1e-3),
        attributes=("teacher_layers",),
        defaults={RailKDResampling: {"every_n_epochs": 1, "every_n_steps": None}},
        steps=8,  # 4 batches per epoch: one draw per epoch
        curve=[0, 0, 0, 0, 1, 1, 1, 1],
        user=lambda: [RailKDResampling(every_n_steps=2)],
        user_steps=6,
        user_curve=[0, 0, 1, 1, 2, 2],
    ),
    "SID": Case(
        make=lambda: SID(teacher=tiny(layers=4), student=tiny(seed=2, layers=2), learning_rate=1e-3),
        attributes=("stage",),
        defaults={SIDStages: {"time_limit": "equal_phases", "epochs_per_stage": None, "cosine_threshold": 0.0}},
        steps=6,  # 3 stages, 2 steps each
        curve=[1, 1, 2, 2, 3, 3],
        user=lambda: [SIDStages(time_limit="none", cosine_threshold=5.0)],  # above any distance: one stage per batch
        user_steps=5,
        user_curve=[1, 2, 3, 3, 3],
    ),
    "AnnealingKD": Case(
        make=lambda: AnnealingKD(teacher=tiny(), student=tiny(seed=2, layers=2, hidden=16), learning_rate=1e-3),
        attributes=("teacher_scale",),
        defaults={TemperatureSchedule: {"max_temperature": 7}},
        steps=7,  # τ_max = 7 phases of one step: φ = 1/7 … 1
        curve=[k / 7 for k in range(1, 8)],
        user=lambda: [TemperatureSchedule(3)],
        user_steps=6,
        user_curve=[1 / 3, 1 / 3, 2 / 3, 2 / 3, 1.0, 1.0],
    ),
    "ContinuationKD": Case(
        make=lambda: ContinuationKD(teacher=tiny(), student=tiny(seed=2, layers=2, hidden=16), margin=0.0, learning_rate=1e-3),
        attributes=("teacher_scale", "hard_mix"),
        defaults={
            TemperatureSchedule: {"max_temperature": 10},
            ContinuationWeight: {"switch_fraction": 0.666, "ramp_denominator": 1.333},
        },
        steps=10,  # φ = (i+1)/10; ψ = i/(1.333·10) while i ≤ 6.66, then 1
        curve=[((i + 1) / 10, i / 13.33 if i <= 6 else 1.0) for i in range(10)],
        user=lambda: [TemperatureSchedule(3), ContinuationWeight(0.5, 1.0)],
        user_steps=6,
        user_curve=list(zip([1 / 3, 1 / 3, 2 / 3, 2 / 3, 1.0, 1.0], [0, 1 / 6, 2 / 6, 3 / 6, 1.0, 1.0])),
    ),
    "MobileBERT": Case(
        make=lambda: MobileBERT(
            teacher=tiny_mobilebert("classification", layers=4, intra=32, ffn=1, seed=1, dropout=0.0),
            student=tiny_mobilebert("classification", layers=2, seed=2, dropout=0.0),
            learning_rate=1e-3,
        ),
        attributes=("stage",),
        defaults={MobileBERTStages: {"steps_per_stage": None, "total_steps": None}},
        steps=6,  # 3 stages in equal phases of the 6 planned steps
        curve=[1, 1, 2, 2, 3, 3],
        user=lambda: [MobileBERTStages(steps_per_stage=1)],
        user_steps=5,
        user_curve=[1, 2, 3, 3, 3],
    ),
}


def _flat(values: list) -> list:
    """One flat list (pytest.approx compares flat sequences only): (φ, ψ) pairs become φ, ψ, φ, ψ, …"""
    return [item for value in values for item in (value if isinstance(value, tuple) else (value,))]


def _recorded(recorder: Recorder, attributes: tuple[str, ...]) -> list:
    values = [row[2][name] for row in recorder.rows for name in attributes]
    return _draws(values) if attributes == ("teacher_layers",) else values


@pytest.mark.parametrize("name", CASES)
def test_a_bare_trainer_gets_the_papers_schedule(name, tmp_path):
    case, recorder = CASES[name], Recorder(*CASES[name].attributes)
    trainer = fit(case.make(), [recorder], tmp_path, max_steps=case.steps)
    for kind, settings in case.defaults.items():
        (attached,) = [c for c in trainer.callbacks if isinstance(c, kind)]
        assert {key: getattr(attached, key) for key in settings} == settings
    assert _recorded(recorder, case.attributes) == pytest.approx(_flat(case.curve))


@pytest.mark.parametrize("name", CASES)
def test_a_users_callback_replaces_the_default(name, tmp_path):
    case, recorder = CASES[name], Recorder(*CASES[name].attributes)
    own = case.user()
    trainer = fit(case.make(), [*own, recorder], tmp_path, max_steps=case.user_steps)
    for callback in own:
        assert [c for c in trainer.callbacks if isinstance(c, type(callback))] == [callback]
    assert _recorded(recorder, case.attributes) == pytest.approx(_flat(case.user_curve))


@pytest.mark.parametrize("name", CASES)
def test_resume_mid_schedule_continues_the_attached_default(name, tmp_path):
    case = CASES[name]
    # 12 rows = 3 batches per epoch: the checkpoint at step 4 is in the middle of epoch 1
    full, resumed, checkpoint = stop_and_resume(case.make, lambda: [], tmp_path, case.attributes, total=7, stop=4, rows=12)
    assert_same_rows(full, resumed)
    saved = {key.split("{")[0] for key in checkpoint["callbacks"]}
    assert {kind.__name__ for kind in case.defaults} <= saved, "the attached defaults save their state"


def test_a_subclass_of_the_callback_counts_as_the_users(tmp_path):
    class Halved(TheseusReplacingRate):
        def value(self, step: int, total: int) -> float:
            return super().value(step, total) / 2

    own = Halved()
    trainer = fit(CASES["Theseus"].make(), [own], tmp_path, max_steps=1)
    assert [c for c in trainer.callbacks if isinstance(c, TheseusReplacingRate)] == [own]
    assert trainer.lightning_module.replacing_rate == pytest.approx(0.15)


def test_evaluation_attaches_no_schedule(tmp_path):
    method = CASES["AnnealingKD"].make()
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.validate(method, dataloaders=DataLoader(_Rows("classification", 8), batch_size=4), verbose=False)
    assert not any(isinstance(c, TemperatureSchedule) for c in trainer.callbacks)
    assert method.teacher_scale is None


def test_without_a_trainer_every_default_is_returned():
    method = CASES["ContinuationKD"].make()
    assert [type(c) for c in method.configure_callbacks()] == [TemperatureSchedule, ContinuationWeight]
    assert unless_configured(method, []) == []

"""TemperatureSchedule: the φ staircase at chosen steps, checkpointed resume, and its checks."""

from __future__ import annotations

import pytest
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from lightning_kd.callbacks import TemperatureSchedule
from lightning_kd.callbacks.temperature_schedule import annealing_teacher_scale
from lightning_kd.methods import KD, AnnealingKD
from tests.callbacks.runs import Recorder, assert_same_rows, fit, stop_and_resume, tiny


@pytest.mark.parametrize(("step", "phi"), [(0, 1 / 7), (9, 1 / 7), (10, 2 / 7), (35, 4 / 7), (59, 6 / 7), (60, 1.0), (69, 1.0)])
def test_staircase_of_equal_phases(step, phi):
    # τ_max = 7 over I = 70 steps: 7 phases of 10 steps, φ = 1/7, 2/7, …, 1
    assert TemperatureSchedule(7).value(step, 70) == pytest.approx(phi)


@pytest.mark.parametrize(
    ("step", "total", "t_max", "phi"),
    [(3, 10, 3, 1 / 3), (4, 10, 3, 2 / 3), (6, 10, 3, 2 / 3), (7, 10, 3, 1.0), (0, 10, 2.5, 1 - 2 / 2.5), (7, 10, 2.5, 1.0)],
)
def test_written_out_definition(step, total, t_max, phi):
    # τ = (1 − i/I)·τ_max; φ = 1 − (max(1, ⌈τ⌉) − 1)/τ_max. E.g. i=3, I=10, τ_max=3: τ = 2.1 → ⌈τ⌉ = 3 → φ = 1/3
    assert annealing_teacher_scale(step, total, t_max) == pytest.approx(phi)


def _annealing():
    return AnnealingKD(teacher=tiny(), student=tiny(seed=2, layers=2, hidden=16), learning_rate=1e-3)


def test_the_module_sees_phi(tmp_path):
    recorder = Recorder("teacher_scale")
    fit(_annealing(), [TemperatureSchedule(3), recorder], tmp_path, max_steps=6)
    assert [values["teacher_scale"] for _, _, values in recorder.rows] == pytest.approx([1 / 3, 1 / 3, 2 / 3, 2 / 3, 1, 1])


def test_resume_mid_schedule_matches_an_uninterrupted_run(tmp_path):
    full, resumed, checkpoint = stop_and_resume(_annealing, lambda: [TemperatureSchedule(3)], tmp_path, ("teacher_scale",))
    assert_same_rows(full, resumed)
    state = next(v for k, v in checkpoint["callbacks"].items() if "TemperatureSchedule" in k)
    assert state == {"total_steps": 6, "last_value": pytest.approx(2 / 3)}


def test_checks(tmp_path):
    with pytest.raises(MisconfigurationException, match="drives AnnealingKD or ContinuationKD"):
        fit(KD(teacher=tiny(), student=tiny(seed=2, layers=2, hidden=16)), [TemperatureSchedule()], tmp_path, max_steps=1)
    with pytest.raises(ValueError, match=">= 1"):
        TemperatureSchedule(0.5)


def test_a_fresh_fit_lays_out_its_own_curve(tmp_path):
    schedule = TemperatureSchedule(3)
    fit(_annealing(), [schedule], tmp_path / "first", max_steps=6)
    recorder = Recorder("teacher_scale")
    fit(_annealing(), [schedule, recorder], tmp_path / "second", max_steps=3)  # same callback object, new run
    assert schedule.total_steps == 3
    assert [values["teacher_scale"] for _, _, values in recorder.rows] == pytest.approx([1 / 3, 2 / 3, 1])

"""ContinuationWeight: ψ at chosen steps, checkpointed resume of both Continuation-KD schedules, checks."""

from __future__ import annotations

import pytest
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from lightning_kd.callbacks import ContinuationWeight, TemperatureSchedule
from lightning_kd.methods import AnnealingKD, ContinuationKD
from tests.callbacks.runs import Recorder, assert_same_rows, fit, stop_and_resume, tiny


@pytest.mark.parametrize(("step", "psi"), [(0, 0.0), (500, 500 / 1333), (666, 666 / 1333), (667, 1.0), (999, 1.0)])
def test_psi_at_chosen_steps(step, psi):
    # σ = 0.666, δ = 1.333, I = 1000: ψ = i/(δI) while i ≤ σI, then 1 (≈ 0.5 just before the jump)
    assert ContinuationWeight(0.666, 1.333).value(step, 1000) == pytest.approx(psi)


def _continuation():
    return ContinuationKD(teacher=tiny(), student=tiny(seed=2, layers=2, hidden=16), margin=0.0, learning_rate=1e-3)


def _callbacks():
    return [TemperatureSchedule(3), ContinuationWeight(0.5, 1.0)]


def test_the_module_sees_phi_and_psi(tmp_path):
    recorder = Recorder("teacher_scale", "hard_mix")
    fit(_continuation(), [*_callbacks(), recorder], tmp_path, max_steps=6)
    assert [values["hard_mix"] for _, _, values in recorder.rows] == pytest.approx([0, 1 / 6, 2 / 6, 3 / 6, 1, 1])
    assert [values["teacher_scale"] for _, _, values in recorder.rows] == pytest.approx([1 / 3, 1 / 3, 2 / 3, 2 / 3, 1, 1])


def test_resume_mid_schedule_matches_an_uninterrupted_run(tmp_path):
    full, resumed, _ = stop_and_resume(_continuation, _callbacks, tmp_path, ("teacher_scale", "hard_mix"))
    assert_same_rows(full, resumed)


def test_checks(tmp_path):
    annealing = AnnealingKD(teacher=tiny(), student=tiny(seed=2, layers=2, hidden=16))
    with pytest.raises(MisconfigurationException, match="drives ContinuationKD"):
        fit(annealing, [TemperatureSchedule(), ContinuationWeight()], tmp_path, max_steps=1)
    with pytest.raises(ValueError, match="switch_fraction"):
        ContinuationWeight(switch_fraction=1.5)
    with pytest.raises(ValueError, match="ramp_denominator"):
        ContinuationWeight(ramp_denominator=0)
    with pytest.raises(ValueError, match="exceed 1"):
        ContinuationWeight(switch_fraction=0.9, ramp_denominator=0.5)

"""MobileBERTStages: the step rules, checkpointed resume, and the method/strategy checks."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from lightning_kd.callbacks import MobileBERTStages
from lightning_kd.methods import KD, MobileBERT
from tests.callbacks.runs import Recorder, assert_same_rows, fit, stop_and_resume, tiny
from tests.methods.test_mobilebert import tiny_mobilebert


@pytest.mark.parametrize(("step", "stage"), [(0, 1), (9, 1), (10, 2), (35, 4), (59, 6), (60, 7), (69, 7), (500, 7)])
def test_equal_phases(step, stage):
    # a 6-layer student: 7 stages over A = 70 steps, 10 steps each (s = 1 + ⌊i·7/70⌋)
    assert MobileBERTStages(total_steps=70).stage_at(step, 7) == stage


def test_equal_phases_do_not_divide_evenly():
    # 3 stages over A = 10 steps: 1 + ⌊3i/10⌋ → stage 2 from step 4, stage 3 from step 7
    assert [MobileBERTStages(total_steps=10).stage_at(i, 3) for i in range(10)] == [1, 1, 1, 1, 2, 2, 2, 3, 3, 3]


@pytest.mark.parametrize(("step", "stage"), [(0, 1), (2, 1), (3, 2), (6, 3), (8, 3), (9, 4), (1000, 4)])
def test_steps_per_stage(step, stage):
    assert MobileBERTStages(steps_per_stage=3).stage_at(step, 4) == stage


def _teacher(seed=1):
    return tiny_mobilebert("classification", layers=4, intra=32, ffn=1, seed=seed, dropout=0.0)


def _method(**knobs):
    return MobileBERT(
        teacher=_teacher(), student=tiny_mobilebert("classification", layers=2, seed=2, dropout=0.0), learning_rate=1e-3, **knobs
    )


def test_the_module_follows_the_stages(tmp_path):
    recorder = Recorder("stage")
    fit(_method(), [MobileBERTStages(), recorder], tmp_path / "phases", max_steps=6)  # 3 stages, 2 steps each
    assert [values["stage"] for _, _, values in recorder.rows] == [1, 1, 2, 2, 3, 3]
    recorder = Recorder("stage")
    fit(_method(lower_layers="freeze"), [MobileBERTStages(steps_per_stage=1), recorder], tmp_path / "fixed", max_steps=5)
    assert [values["stage"] for _, _, values in recorder.rows] == [1, 2, 3, 3, 3]


def test_resume_mid_stage_matches_an_uninterrupted_run(tmp_path):
    full, resumed, checkpoint = stop_and_resume(_method, lambda: [MobileBERTStages()], tmp_path, ("stage",))
    assert_same_rows(full, resumed)
    assert [values["stage"] for _, _, values in full] == [2, 3, 3]
    state = next(v for k, v in checkpoint["callbacks"].items() if "MobileBERTStages" in k)
    assert state == {"stage": 2, "phase_steps": 6}


def test_resume_keeps_the_saved_step_total(tmp_path):
    stages = MobileBERTStages()
    stages.load_state_dict({"stage": 2, "phase_steps": 30})
    assert stages.stage_at(10, 3) == 2 and stages.stage_at(20, 3) == 3


def test_checks(tmp_path):
    with pytest.raises(MisconfigurationException, match="drives MobileBERT"):
        fit(KD(teacher=tiny(), student=tiny(seed=2, layers=2, hidden=16)), [MobileBERTStages()], tmp_path, max_steps=1)
    with pytest.raises(MisconfigurationException, match="progressive=False"):
        fit(_method(progressive=False), [MobileBERTStages()], tmp_path / "off", max_steps=1)
    plain_ddp = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False)
    with pytest.raises(MisconfigurationException, match="ddp_find_unused_parameters_true"):
        MobileBERTStages().setup(plain_ddp, _method(), "fit")
    with pytest.raises(ValueError, match="not both"):
        MobileBERTStages(steps_per_stage=2, total_steps=10)
    with pytest.raises(ValueError, match="steps_per_stage"):
        MobileBERTStages(steps_per_stage=0)
    with pytest.raises(ValueError, match="total_steps"):
        MobileBERTStages(total_steps=0)

"""SIDStages: the time and threshold rules, checkpointed resume, and the method/strategy checks."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from lightning_kd.callbacks import SIDStages
from lightning_kd.methods import KD, SID
from tests.callbacks.runs import Recorder, assert_same_rows, fit, stop_and_resume, tiny


@pytest.mark.parametrize(("step", "stage"), [(0, 1), (9, 1), (10, 2), (35, 4), (59, 6), (60, 7), (69, 7)])
def test_equal_phases(step, stage):
    # a 6-layer student: 7 stages over I = 70 steps, 10 steps each
    assert SIDStages().time_stage(step, 0, 70, 7) == stage


@pytest.mark.parametrize(("epoch", "stage"), [(0, 1), (1, 1), (2, 2), (5, 3), (40, 4)])
def test_epochs_per_stage(epoch, stage):
    assert SIDStages(time_limit="epochs", epochs_per_stage=2).time_stage(1000, epoch, 10, 4) == stage


def _sid():
    return SID(teacher=tiny(layers=4), student=tiny(seed=2, layers=2), learning_rate=1e-3)


def test_the_module_follows_the_stages(tmp_path):
    recorder = Recorder("stage")
    fit(_sid(), [SIDStages(), recorder], tmp_path / "phases", max_steps=6)
    assert [values["stage"] for _, _, values in recorder.rows] == [1, 1, 2, 2, 3, 3]
    recorder = Recorder("stage")  # a threshold above any cosine distance: one stage per batch, then stay
    fit(_sid(), [SIDStages(time_limit="none", cosine_threshold=5.0), recorder], tmp_path / "threshold", max_steps=5)
    assert [values["stage"] for _, _, values in recorder.rows] == [1, 2, 3, 3, 3]


def test_resume_mid_stage_matches_an_uninterrupted_run(tmp_path):
    full, resumed, checkpoint = stop_and_resume(_sid, lambda: [SIDStages()], tmp_path, ("stage",))
    assert_same_rows(full, resumed)
    assert [values["stage"] for _, _, values in full] == [2, 3, 3]
    state = next(v for k, v in checkpoint["callbacks"].items() if "SIDStages" in k)
    assert state == {"stage": 2, "total_steps": 6}


def test_threshold_stage_survives_a_resume(tmp_path):
    # the threshold rule is not a function of the step: only the saved counter can restore it
    full, resumed, _ = stop_and_resume(
        _sid, lambda: [SIDStages(time_limit="none", cosine_threshold=5.0)], tmp_path, ("stage",), total=5, stop=2
    )
    assert_same_rows(full, resumed)
    assert [values["stage"] for _, _, values in resumed] == [3, 3, 3]


def test_checks(tmp_path):
    with pytest.raises(MisconfigurationException, match="drives SID"):
        fit(KD(teacher=tiny(), student=tiny(seed=2, layers=2, hidden=16)), [SIDStages()], tmp_path, max_steps=1)
    plain_ddp = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False)
    with pytest.raises(MisconfigurationException, match="ddp_find_unused_parameters_true"):
        SIDStages().setup(plain_ddp, _sid(), "fit")
    with pytest.raises(ValueError, match="only with"):
        SIDStages(epochs_per_stage=2)
    with pytest.raises(ValueError, match="only with"):
        SIDStages(time_limit="epochs")
    with pytest.raises(ValueError, match="cosine_threshold > 0"):
        SIDStages(time_limit="none")
    with pytest.raises(ValueError, match="time_limit"):
        SIDStages(time_limit="avg")


def test_a_fresh_fit_starts_at_stage_one(tmp_path):
    stages = SIDStages(time_limit="none", cosine_threshold=5.0)
    fit(_sid(), [stages], tmp_path / "first", max_steps=4)
    assert stages.stage == 3
    recorder = Recorder("stage")
    fit(_sid(), [stages, recorder], tmp_path / "second", max_steps=2)
    assert [values["stage"] for _, _, values in recorder.rows] == [1, 2]

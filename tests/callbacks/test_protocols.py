"""Callbacks drive any module with the members their protocol names, refuse one without them at setup
naming what is missing, and refuse a second callback that sets the same attribute."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.utils.data import DataLoader

from lightning_kd.callbacks import (
    ContinuationWeight,
    MobileBERTStages,
    RailKDResampling,
    SIDStages,
    StepSchedule,
    TemperatureSchedule,
    TheseusReplacingRate,
)
from lightning_kd.callbacks.protocols import ResamplesTeacherLayers, StagedByDistance, protocol_members
from lightning_kd.methods import SID
from tests.callbacks.runs import Recorder, fit, tiny


class Plain(pl.LightningModule):
    """A module of the user's own: one linear layer, nothing a schedule could drive."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Replaced(Plain):
    """The same module with the one attribute TheseusReplacingRate sets."""

    def __init__(self) -> None:
        super().__init__()
        self.replacing_rate: float | None = None


def _trainer(root, steps: int, callbacks: list) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=root, callbacks=callbacks,
    )


def test_protocol_members_include_their_bases_in_order():
    assert protocol_members(StagedByDistance) == ["stage", "num_stages", "last_cls_distance"]
    assert protocol_members(ResamplesTeacherLayers) == ["layer_selection", "resample_teacher_layers", "set_teacher_layers"]


def test_a_module_of_ones_own_with_the_attribute_is_driven(tmp_path):
    recorder = Recorder("replacing_rate")
    data = DataLoader(torch.randn(16, 2), batch_size=4)
    _trainer(tmp_path, 4, [TheseusReplacingRate(0.5, 0.5, schedule="constant"), recorder]).fit(Replaced(), data)
    assert [values["replacing_rate"] for _, _, values in recorder.rows] == [0.5, 0.5, 1.0, 1.0]


def test_a_schedule_of_ones_own_that_names_no_protocol_checks_nothing(tmp_path):
    class Ramp(StepSchedule):
        log_name = "ramp"

        def value(self, step: int, total: int) -> float:
            return step / total

        def apply(self, pl_module, value: float) -> None:
            pl_module.ramp = value

    module, recorder = Plain(), Recorder("ramp")
    _trainer(tmp_path, 4, [Ramp(), recorder]).fit(module, DataLoader(torch.randn(16, 2), batch_size=4))
    assert [values["ramp"] for _, _, values in recorder.rows] == [0.0, 0.25, 0.5, 0.75]


@pytest.mark.parametrize(
    ("callback", "needs"),
    [
        (TheseusReplacingRate(), "`replacing_rate`"),
        (TemperatureSchedule(), "`teacher_scale`"),
        (ContinuationWeight(), "`hard_mix`"),
        (SIDStages(), "`stage`, `num_stages`"),
        (SIDStages(time_limit="none", cosine_threshold=1.0), "`stage`, `num_stages`, `last_cls_distance`"),
        (MobileBERTStages(), "`stage`, `num_stages`"),
        (RailKDResampling(), "`layer_selection`, `resample_teacher_layers`, `set_teacher_layers`"),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, pl.Callback) else "",
)
def test_a_module_without_the_members_is_refused_at_setup(callback, needs, tmp_path):
    with pytest.raises(MisconfigurationException, match=rf"needs a module with {needs} .*the module is a Plain without"):
        callback.setup(_trainer(tmp_path, 1, []), Plain(), "fit")


def test_the_message_names_only_what_is_missing(tmp_path):
    staged = Plain()
    staged.stage, staged.num_stages = None, 3  # Staged, but no distance for the threshold rule
    with pytest.raises(MisconfigurationException, match=r"without `last_cls_distance`\. Remove it"):
        SIDStages(time_limit="none", cosine_threshold=1.0).setup(_trainer(tmp_path, 1, []), staged, "fit")
    SIDStages().setup(_trainer(tmp_path, 1, []), staged, "fit")  # the time rule alone needs no distance


def test_two_callbacks_that_set_the_same_attribute_are_refused(tmp_path):
    sid = SID(teacher=tiny(layers=4), student=tiny(seed=2, layers=2))
    with pytest.raises(MisconfigurationException, match="SIDStages and MobileBERTStages both set the module's `stage`"):
        fit(sid, [SIDStages(), MobileBERTStages()], tmp_path, max_steps=1)
    assert sid.stage is None, "refused before the first step"

"""TheseusReplacingRate: the curve, checkpointed resume, and the method/strategy checks."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
from pytorch_lightning.strategies import DeepSpeedStrategy, FSDPStrategy
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from lightning_kd.callbacks import TheseusReplacingRate
from lightning_kd.methods import KD, Theseus
from tests.callbacks.runs import assert_same_rows, fit, stop_and_resume, tiny


@pytest.mark.parametrize(
    ("step", "linear", "constant"),
    [(0, 0.3, 0.3), (33, 0.3 + 0.7 * 33 / 66, 0.3), (65, 0.3 + 0.7 * 65 / 66, 0.3), (66, 1.0, 1.0), (99, 1.0, 1.0)],
)
def test_rate_at_chosen_steps(step, linear, constant):
    # r0 = 0.3, ρ = 0.66, I = 100: p reaches 1 at step 66 (the spec's p(i) = r0 + (1 − r0)·i/(ρI), capped at 1)
    assert TheseusReplacingRate(0.3, 0.66).value(step, 100) == pytest.approx(linear)
    assert TheseusReplacingRate(0.3, 0.66, schedule="constant").value(step, 100) == pytest.approx(constant)


def _theseus():
    return Theseus(teacher=tiny(layers=4), student_init="teacher_first", student_layers=2, learning_rate=1e-3)


def test_the_module_sees_the_rate_of_each_step(tmp_path):
    from tests.callbacks.runs import Recorder

    recorder = Recorder("replacing_rate", "last_layout")
    fit(_theseus(), [TheseusReplacingRate(0.2, 0.5), recorder], tmp_path, max_steps=8)
    rates = [values["replacing_rate"] for _, _, values in recorder.rows]
    assert rates == pytest.approx([0.2 + 0.8 * i / 4 for i in range(4)] + [1.0] * 4)
    layouts = [values["last_layout"] for _, _, values in recorder.rows]
    assert all(layout == [None, None] for layout in layouts[4:]), "p = 1 trains the pure student"
    assert all(any(c is None for c in layout) for layout in layouts), "every layout keeps one student layer"


def test_resume_mid_schedule_matches_an_uninterrupted_run(tmp_path):
    full, resumed, checkpoint = stop_and_resume(
        _theseus, lambda: [TheseusReplacingRate(0.3, 0.66)], tmp_path, ("replacing_rate", "last_layout")
    )
    assert_same_rows(full, resumed)
    state = next(v for k, v in checkpoint["callbacks"].items() if "TheseusReplacingRate" in k)
    assert state["total_steps"] == 6
    assert not any(k.startswith("teachers.") for k in checkpoint["state_dict"])


def test_refuses_another_method(tmp_path):
    method = KD(teacher=tiny(), student=tiny(seed=2, layers=2, hidden=16))
    with pytest.raises(MisconfigurationException, match="drives Theseus.*KD"):
        fit(method, [TheseusReplacingRate()], tmp_path, max_steps=1)


def test_strategy_checks():
    callback, method = TheseusReplacingRate(), _theseus()
    plain_ddp = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False)
    with pytest.raises(MisconfigurationException, match="--trainer.strategy=ddp_find_unused_parameters_true"):
        callback.setup(plain_ddp, method, "fit")
    callback.setup(plain_ddp, method, "validate")  # evaluation runs the pure student: no unused parameters
    finds_unused = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp_find_unused_parameters_true", logger=False)
    callback.setup(finds_unused, method, "fit")
    with pytest.raises(MisconfigurationException, match="ZeRO stages 1 and 2 only"):
        callback.setup(SimpleNamespace(strategy=DeepSpeedStrategy(stage=3)), method, "fit")
    callback.setup(SimpleNamespace(strategy=DeepSpeedStrategy(stage=2)), method, "fit")
    with pytest.raises(MisconfigurationException, match="FSDP is not supported"):
        callback.setup(SimpleNamespace(strategy=FSDPStrategy()), method, "fit")


def test_bad_arguments():
    with pytest.raises(ValueError, match="probability"):
        TheseusReplacingRate(replacing_rate=1.5)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        TheseusReplacingRate(not_replaced_steps=0)
    with pytest.raises(ValueError, match="linear"):
        TheseusReplacingRate(schedule="cosine")


class _RankLayouts(pl.Callback):
    """Writes each rank's layouts to ``<directory>/layouts_<rank>.json`` (spawned ranks share no memory)."""

    def __init__(self, directory) -> None:
        self.directory, self.layouts = directory, []

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.layouts.append(pl_module.last_layout)

    def on_train_end(self, trainer, pl_module) -> None:
        (self.directory / f"layouts_{trainer.global_rank}.json").write_text(json.dumps(self.layouts))


@pytest.mark.slow
def test_two_ddp_processes_agree_on_every_layout(tmp_path):
    """Under DDP (gloo, 2 CPU processes) with unused-parameter detection the run trains, and both ranks
    draw the same layout at every step."""
    from torch.utils.data import DataLoader

    from tests.callbacks.runs import _Rows

    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn_find_unused_parameters_true",
        max_steps=5,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[TheseusReplacingRate(0.3, 0.66), _RankLayouts(tmp_path)],
    )
    trainer.fit(_theseus(), train_dataloaders=DataLoader(_Rows("classification", 16), batch_size=4))
    first, second = (json.loads((tmp_path / f"layouts_{rank}.json").read_text()) for rank in (0, 1))
    assert first == second and len(first) == 5

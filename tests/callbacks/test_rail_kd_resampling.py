"""RailKDResampling: when it draws, that draws are keyed, checkpointed resume, and its checks."""

from __future__ import annotations

import pytest

from lightning_kd.callbacks import RailKDResampling
from lightning_kd.methods import KD, RAILKD
from tests.callbacks.runs import Recorder, assert_same_rows, fit, stop_and_resume, tiny


def _rail(kind="classification"):
    return RAILKD(teacher=tiny(kind, layers=8), student=tiny(kind, seed=2, layers=3, hidden=16), learning_rate=1e-3)


def _layers_by_step(recorder):
    return [(step, values["teacher_layers"]) for step, _, values in recorder.rows]


def test_draws_once_per_epoch(tmp_path):
    recorder = Recorder("teacher_layers")
    fit(_rail(), [RailKDResampling(), recorder], tmp_path, max_steps=8)  # 4 batches per epoch: 2 epochs
    layers = [layers for _, layers in _layers_by_step(recorder)]
    assert layers[0] == layers[1] == layers[2] == layers[3] and layers[4] == layers[5] == layers[6] == layers[7]
    assert layers[0] != layers[4]


def test_draws_every_n_steps_and_every_k_epochs(tmp_path):
    recorder = Recorder("teacher_layers")
    fit(_rail(), [RailKDResampling(every_n_steps=3), recorder], tmp_path / "steps", max_steps=7)
    layers = [layers for _, layers in _layers_by_step(recorder)]
    assert layers[0] == layers[1] == layers[2] and layers[3] == layers[4] == layers[5]
    assert len({str(layers[0]), str(layers[3]), str(layers[6])}) == 3
    recorder = Recorder("teacher_layers")
    fit(_rail(), [RailKDResampling(every_n_epochs=2), recorder], tmp_path / "epochs", max_steps=12)
    layers = [layers for _, layers in _layers_by_step(recorder)]
    assert len({str(x) for x in layers[:8]}) == 1 and layers[8] != layers[0]


def test_pretraining_draws_too(tmp_path):
    recorder = Recorder("teacher_layers")
    fit(_rail("mlm"), [RailKDResampling(every_n_steps=2), recorder], tmp_path, max_steps=4, kind="mlm")
    layers = [layers for _, layers in _layers_by_step(recorder)]
    assert layers[0] == layers[1] and layers[2] == layers[3] and layers[0] != layers[2]


class _CountingResampling(RailKDResampling):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.draws = []

    def draw(self, pl_module, unit, index):
        self.draws.append((unit, index))
        return super().draw(pl_module, unit, index)


@pytest.mark.parametrize("callback", [{"every_n_epochs": 1}, {"every_n_steps": 2}], ids=["per_epoch", "per_2_steps"])
def test_resume_mid_epoch_matches_an_uninterrupted_run(callback, tmp_path):
    # 3 batches per epoch: the checkpoint at step 4 is in the middle of epoch 1
    made = []

    def callbacks():
        made.append(_CountingResampling(**callback))
        return [made[-1]]

    full, resumed, checkpoint = stop_and_resume(_rail, callbacks, tmp_path, ("teacher_layers",), total=7, stop=4, rows=12)
    assert_same_rows(full, resumed)
    # the resumed run took the saved layers instead of drawing again at its first batch
    assert made[-1].draws == ([("epoch", 2)] if "every_n_epochs" in callback else [("step", 4), ("step", 6)])
    state = next(v for k, v in checkpoint["callbacks"].items() if "Resampling" in k)
    # saved after step 3's batch: the layers drawn at epoch 1 (steps 3-5) or at step 2 (steps 2-3)
    assert state["teacher_layers"] is not None
    assert (state["last_epoch"], state["last_step"]) == ((1, None) if "every_n_epochs" in callback else (None, 2))
    if "every_n_epochs" in callback:
        assert state["teacher_layers"] == full[0][2]["teacher_layers"]
    assert {"student_projection.weight", "teacher_projections.0.weight"} <= set(checkpoint["state_dict"])


def test_refuses_another_method_and_bad_arguments(tmp_path):
    from pytorch_lightning.utilities.exceptions import MisconfigurationException

    with pytest.raises(MisconfigurationException, match="drives RAILKD"):
        fit(KD(teacher=tiny(), student=tiny(seed=2, layers=2, hidden=16)), [RailKDResampling()], tmp_path, max_steps=1)
    with pytest.raises(ValueError, match="not both"):
        RailKDResampling(every_n_epochs=1, every_n_steps=10)
    with pytest.raises(ValueError, match=">= 1"):
        RailKDResampling(every_n_steps=0)


def test_a_fresh_fit_draws_from_scratch(tmp_path):
    resampling, first, second = RailKDResampling(), Recorder("teacher_layers"), Recorder("teacher_layers")
    fit(_rail(), [resampling, first], tmp_path / "first", max_steps=6)  # ends in epoch 1
    fit(_rail(), [resampling, second], tmp_path / "second", max_steps=2)
    assert second.rows[0][2]["teacher_layers"] == first.rows[0][2]["teacher_layers"]  # epoch 0's draw again

"""Annealing-KD: the annealed logit MSE against a written-out formula, properties, the contract,
two teachers and errors (the φ staircase is tested with its callback)."""

from __future__ import annotations

import copy

import pytest
import torch

from lightning_kd.callbacks import TemperatureSchedule
from lightning_kd.methods import AnnealingKD
from tests.callbacks.runs import fit, tiny
from tests.conftest import make_batch
from tests.methods.contract import check_contract

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _logits(model, batch):
    with torch.no_grad():
        return model.eval()(**{k: batch[k] for k in INPUTS}).logits.double()


@pytest.mark.parametrize("phi", [1 / 7, 3 / 7, 1.0])
def test_soft_term_matches_the_formula(phi):
    teacher, student = tiny(), tiny(seed=2, layers=2, hidden=16)
    with torch.no_grad():
        teacher.classifier.weight.mul_(100.0)
    method = AnnealingKD(teacher=teacher, student=student, soft_weight=0.8, hard_weight=0.3).eval()
    method.teacher_scale = phi
    batch = make_batch()
    terms = method.compute_losses(batch)
    zs, zt = _logits(student, batch), _logits(teacher, batch)
    expected = 0.8 * sum((zs[b, c] - phi * zt[b, c]) ** 2 for b in range(zs.shape[0]) for c in range(zs.shape[1])) / zs.numel()
    assert terms["soft"].item() == pytest.approx(float(expected), rel=1e-5)
    assert set(terms) == {"soft", "hard", "loss"}


def test_pretraining_mse_covers_the_chosen_positions():
    teacher, student = tiny("mlm"), tiny("mlm", seed=2, layers=2, hidden=16)
    batch = make_batch("mlm")
    method = AnnealingKD(teacher=teacher, student=student).eval()
    method.teacher_scale = 0.5
    zs, zt = _logits(student, batch), _logits(teacher, batch)
    rows = (zs - 0.5 * zt).pow(2).mean(-1)
    keep = batch["labels"].ne(-100)
    assert method.compute_losses(batch)["soft"].item() == pytest.approx(rows[keep].mean().item(), rel=1e-5)
    method = AnnealingKD(teacher=teacher, student=student, reduction="gkd").eval()
    method.teacher_scale = 0.5
    expected = (rows * keep).sum() / rows.numel()
    assert method.compute_losses(batch)["soft"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_zero_for_a_copy_at_full_scale_and_gradients_reach_the_student_only():
    teacher = tiny()
    method = AnnealingKD(teacher=teacher, student=copy.deepcopy(teacher)).eval()
    method.teacher_scale = 1.0
    assert method.compute_losses(make_batch())["soft"].item() == pytest.approx(0.0, abs=1e-12)
    method = AnnealingKD(teacher=tiny(), student=tiny(seed=2, layers=2, hidden=16))
    method.teacher_scale = 0.25
    method.compute_losses(make_batch())["loss"].backward()
    assert method.student.classifier.weight.grad is not None
    assert all(p.grad is None for p in method.teachers[0].parameters())


@pytest.mark.parametrize("stage", ["classification", "mlm"])
def test_annealing_kd_contract(stage, tmp_path):
    method = AnnealingKD(teacher=tiny(stage), student=tiny(stage, seed=2, layers=2, hidden=16))
    method.teacher_scale = 2 / 7
    check_contract(method, make_batch(stage), tmp_path)


def test_two_teachers():
    method = AnnealingKD(teachers=[tiny(layers=4), tiny(seed=3, layers=6, hidden=24)], student=tiny(seed=2, layers=2, hidden=16))
    method.teacher_scale = 0.5
    assert torch.isfinite(method.compute_losses(make_batch())["loss"])


def test_bad_inputs_fail_fast(tmp_path):
    with pytest.raises(ValueError, match="soft_weight"):
        AnnealingKD(teacher=tiny(), student=tiny(seed=2, layers=2, hidden=16), soft_weight=0.0)
    method = AnnealingKD(teacher=tiny(), student=tiny(seed=2, layers=2, hidden=16))
    with pytest.raises(RuntimeError, match="TemperatureSchedule"):
        method.compute_losses(make_batch())
    trainer = fit(method, [], tmp_path, max_steps=1)  # a fit needs no callback: TemperatureSchedule is attached
    (schedule,) = [c for c in trainer.callbacks if isinstance(c, TemperatureSchedule)]
    assert schedule.max_temperature == 7 and method.teacher_scale == pytest.approx(1 / 7)

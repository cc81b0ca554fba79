"""Continuation-KD: the ψ-mixed, margin-gated loss against a written-out formula, the ψ = 0 / 1 ends,
gradients of gated examples, the contract, two teachers and errors."""

from __future__ import annotations

import pytest
import torch

from lightning_kd.callbacks import ContinuationWeight, TemperatureSchedule
from lightning_kd.losses.continuation import margin_gated
from lightning_kd.methods import ContinuationKD
from tests.callbacks.runs import fit, tiny
from tests.conftest import make_batch
from tests.methods.contract import check_contract

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _method(**knobs):
    teacher, student = tiny(), tiny(seed=2, layers=2, hidden=16)
    with torch.no_grad():  # per-example soft losses of clearly different sizes
        teacher.classifier.weight.mul_(60.0)
    return ContinuationKD(teacher=teacher, student=student, **knobs).eval()


def _varied_batch():
    """A batch whose examples start with different tokens: a tiny BERT's [CLS]-pooled logits barely
    depend on the rest of the input, so without this the per-example losses agree to 1e-4 and which
    ones a margin gates out is decided by float rounding (it differs between CPUs)."""
    batch = make_batch()
    batch["input_ids"][:, 0] = torch.tensor([5, 17, 29, 41])
    return batch


def _per_example(method, batch, phi, soft_weight):
    inputs = {k: batch[k] for k in INPUTS}
    with torch.no_grad():
        zs, zt = method.student(**inputs).logits.double(), method.teachers[0](**inputs).logits.double()
        ce = torch.nn.functional.cross_entropy(zs, batch["labels"])
    return [soft_weight * float(((zs[b] - phi * zt[b]) ** 2).mean()) for b in range(zs.shape[0])], float(ce)


def test_loss_matches_the_formula():
    method, batch, phi, psi = _method(soft_weight=0.9, hard_weight=0.7), _varied_batch(), 0.4, 0.3
    soft, ce = _per_example(method, batch, phi, 0.9)
    ranked = sorted(soft)
    # Gates out the two smallest examples: halfway to the third, so no example sits on the boundary
    # (at exactly the second smallest, float32 vs float64 rounding decided whether it was gated).
    margin = (ranked[1] + ranked[2]) / 2 / phi
    method.margin, method.teacher_scale, method.hard_mix = margin, phi, psi
    terms = method.compute_losses(batch)
    expected_soft = sum((1 - psi) * s for s in soft if s > margin * phi) / len(soft)
    assert terms["soft"].item() == pytest.approx(expected_soft, rel=1e-5)
    assert terms["hard"].item() == pytest.approx(psi * 0.7 * ce, rel=1e-5)
    assert 0 < expected_soft < (1 - psi) * sum(soft) / len(soft)


def test_the_ends_of_psi():
    method, batch = _method(), make_batch()
    method.teacher_scale = 0.1
    method.hard_mix = 0.0
    assert set(method.compute_losses(batch)) == {"soft", "loss"}
    method.hard_mix = 1.0
    assert set(method.compute_losses(batch)) == {"hard", "loss"}


def test_gated_examples_get_no_gradient():
    values = torch.tensor([0.5, 2.0, 3.0], requires_grad=True)
    gated = margin_gated(values, 1.0)
    assert gated.tolist() == [0.0, 2.0, 3.0]
    gated.sum().backward()
    assert values.grad.tolist() == [0.0, 1.0, 1.0]  # the hinge max(0, ℓ − m)'s gradient


def test_gradients_reach_the_student_only():
    method = _method()
    method.train()
    method.teacher_scale, method.hard_mix = 0.5, 0.5
    method.compute_losses(make_batch())["loss"].backward()
    assert method.student.classifier.weight.grad is not None
    assert all(p.grad is None for p in method.teachers[0].parameters())


@pytest.mark.parametrize("stage", ["classification", "mlm"])
def test_continuation_kd_contract(stage, tmp_path):
    method = ContinuationKD(teacher=tiny(stage), student=tiny(stage, seed=2, layers=2, hidden=16), margin=0.0)
    method.teacher_scale, method.hard_mix = 0.5, 0.25
    check_contract(method, make_batch(stage), tmp_path, lr=1e-2)


def test_two_teachers():
    method = ContinuationKD(
        teachers=[tiny(layers=4), tiny(seed=3, layers=6, hidden=24)], student=tiny(seed=2, layers=2, hidden=16)
    )
    method.teacher_scale, method.hard_mix = 0.5, 0.2
    assert torch.isfinite(method.compute_losses(make_batch())["loss"])


def test_bad_inputs_fail_fast(tmp_path):
    teacher, student = tiny(), tiny(seed=2, layers=2, hidden=16)
    with pytest.raises(ValueError, match="margin"):
        ContinuationKD(teacher=teacher, student=student, margin=-1.0)
    with pytest.raises(ValueError, match="hard_weight"):
        ContinuationKD(teacher=teacher, student=student, hard_weight=0.0)
    method = ContinuationKD(teacher=teacher, student=student)
    method.teacher_scale = 0.5
    with pytest.raises(RuntimeError, match="ContinuationWeight"):
        method.compute_losses(make_batch())
    # a fit needs no callback: both schedules are attached with the seed's values
    trainer = fit(ContinuationKD(teacher=teacher, student=student), [], tmp_path / "none", max_steps=1)
    (phi,) = [c for c in trainer.callbacks if isinstance(c, TemperatureSchedule)]
    (psi,) = [c for c in trainer.callbacks if isinstance(c, ContinuationWeight)]
    assert (phi.max_temperature, psi.switch_fraction, psi.ramp_denominator) == (10, 0.666, 1.333)
    own = TemperatureSchedule(4)  # the user's φ schedule drives; ψ is still attached
    trainer = fit(ContinuationKD(teacher=teacher, student=student), [own], tmp_path / "own", max_steps=1)
    assert [c for c in trainer.callbacks if isinstance(c, TemperatureSchedule)] == [own]
    assert len([c for c in trainer.callbacks if isinstance(c, ContinuationWeight)]) == 1

"""Strategies inside real methods: teachers of different depth and width, the contract, gradient isolation."""

from __future__ import annotations

import pytest
import torch

from lightning_kd.losses.prediction import PredictionLoss
from lightning_kd.methods import KD, PKD
from lightning_kd.methods.multi_teacher import (
    DGKD,
    MTBERT,
    RLKD,
    TMKD,
    Average,
    MixMT,
    Uncertainty,
)
from tests.conftest import make_batch, make_tiny_bert
from tests.methods.contract import check_contract


def two_teachers(kind="classification"):
    """A 4-layer/32-wide and a 6-layer/48-wide teacher (4 heads each)."""
    return [make_tiny_bert(kind, seed=1, layers=4, hidden=32), make_tiny_bert(kind, seed=3, layers=6, hidden=48)]


def student(kind="classification"):
    return make_tiny_bert(kind, seed=2, layers=2, hidden=16)


def strategies():
    return {
        "average": Average(),
        "tmkd": TMKD(),
        "dgkd": DGKD(survival_p=0.5, sum_losses=True),
        "mt_bert": MTBERT(),
        "uncertainty": Uncertainty(mode="hard"),
        "rl_kd": RLKD(num_teachers=2, num_classes=2, semantic_model=make_tiny_bert(seed=5)),
        "mix_mt": MixMT([Average(), Uncertainty()]),
    }


def assert_no_teacher_gradient(method):
    for teacher in method.teachers:
        assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())


@pytest.mark.parametrize("name", list(strategies()))
def test_kd_with_teachers_of_different_depth_and_width(name):
    method = KD(teachers=two_teachers(), student=student(), prediction=PredictionLoss(temperature=2.0), multi_teacher=strategies()[name])
    batch = make_batch()
    for _ in range(2):  # the second step also trains the RL agent
        terms = method.compute_losses(batch)
        assert torch.isfinite(terms["loss"])
        terms["loss"].backward()
    assert_no_teacher_gradient(method)
    assert any(p.grad is not None for p in method.student.parameters())


@pytest.mark.parametrize("name", ["average", "mt_bert", "uncertainty", "dgkd", "rl_kd"])
@pytest.mark.parametrize("projection", ["teacher_to_student", "student_to_teacher"])
def test_pkd_with_teachers_of_different_depth_and_width(name, projection):
    method = PKD(
        teachers=two_teachers(), student=student(), projection=projection, pairs=["intermediate", "final"],
        multi_teacher=strategies()[name],
    )
    assert [tuple(p.weight.shape) for p in method.projections] == (
        [(16, 32), (16, 48)] if projection == "teacher_to_student" else [(32, 16), (48, 16)]
    )
    terms = method.compute_losses(make_batch())
    assert torch.isfinite(terms["loss"]) and terms["patience"] > 0
    terms["loss"].backward()
    assert_no_teacher_gradient(method)
    ran = method.multi_teacher.select_teachers(2, 0)  # DGKD may drop a teacher: its projection gets no gradient
    assert all(p.grad is not None for i in ran for p in method.projections[i].parameters())


def test_contract_kd_average(tmp_path):
    method = KD(teachers=two_teachers(), student=student(), prediction=PredictionLoss(temperature=2.0), multi_teacher=Average())
    check_contract(method, make_batch(), tmp_path)


@pytest.mark.parametrize("stage", ["classification", "mlm"])
def test_contract_kd_uncertainty(stage, tmp_path):
    method = KD(teachers=two_teachers(stage), student=student(stage), prediction=PredictionLoss(temperature=2.0), multi_teacher=Uncertainty())
    check_contract(method, make_batch(stage), tmp_path)


def test_contract_pkd_mt_bert(tmp_path):
    method = PKD(
        teachers=two_teachers(), student=student(), alpha=0.5, beta=1.0, pairs=["intermediate", "final"],
        positions="all_positions", normalize=False, feature_reduction="mean", projection="teacher_to_student",
        multi_teacher=MTBERT(),
    )
    result = check_contract(method, make_batch(), tmp_path)
    assert set(result["first"]) == {"hard", "soft", "patience", "loss"}


def test_contract_kd_dgkd_and_tmkd_pretraining(tmp_path):
    method = KD(teachers=two_teachers("mlm"), student=student("mlm"), prediction=PredictionLoss(hard_weight=0.0, soft_loss="mse"), multi_teacher=TMKD())
    check_contract(method, make_batch("mlm"), tmp_path / "tmkd")
    method = KD(teachers=two_teachers(), student=student(), prediction=PredictionLoss(temperature=2.0), multi_teacher=DGKD(survival_p=0.5, sum_losses=True))
    check_contract(method, make_batch(), tmp_path / "dgkd")


def test_dgkd_runs_only_the_surviving_teachers(monkeypatch):
    method = KD(teachers=two_teachers(), student=student(), multi_teacher=DGKD(survival_p=0.5, seed=11))
    ran = []
    original = method.run_teacher
    monkeypatch.setattr(method, "run_teacher", lambda index, batch: ran.append(index) or original(index, batch))
    monkeypatch.setattr(type(method), "global_step", property(lambda self: self._test_step))
    for step in range(12):
        method._test_step = step
        ran.clear()
        method.compute_losses(make_batch())
        assert ran == method.multi_teacher.select_teachers(2, step) and ran


def test_rl_agent_is_trained_only_by_its_own_objective():
    method = KD(
        teachers=two_teachers(), student=student(), prediction=PredictionLoss(temperature=2.0),
        multi_teacher=RLKD(num_teachers=2, num_classes=2, semantic_model=make_tiny_bert(seed=5), objective="reinforce_logprob"),
    )
    agent = list(method.multi_teacher.agent.parameters())
    student_params = [p for n, p in method.trainable_named_parameters() if n.startswith("student.")]
    assert {id(p) for p in agent} <= {id(p) for _, p in method.trainable_named_parameters()}
    method.compute_losses(make_batch(seed=0))
    terms = method.compute_losses(make_batch(seed=1))

    student_loss = sum(v for k, v in terms.items() if k not in ("loss", "agent"))
    assert all(g is None for g in torch.autograd.grad(student_loss, agent, retain_graph=True, allow_unused=True))
    assert all(g is None for g in torch.autograd.grad(terms["agent"], student_params, retain_graph=True, allow_unused=True))
    agent_grads = torch.autograd.grad(terms["agent"], agent, retain_graph=True)
    assert sum(g.abs().sum() for g in agent_grads) > 0
    # The total's gradient on the agent is exactly its own objective's.
    total_grads = torch.autograd.grad(terms["loss"], agent, allow_unused=True)
    for total, own in zip(total_grads, agent_grads):
        torch.testing.assert_close(total, own)


def test_rl_semantic_encoder_is_frozen_and_never_saved():
    encoder = make_tiny_bert(seed=5)
    method = KD(teachers=two_teachers(), student=student(), multi_teacher=RLKD(num_teachers=2, num_classes=2, semantic_model=encoder))
    method.train()
    assert not encoder.training
    names = [n for n, _ in method.trainable_named_parameters()]
    assert not any("semantic" in n for n in names) and any(n.startswith("multi_teacher.agent.") for n in names)
    assert not any(k.startswith("multi_teacher.") and "agent" not in k for k in method.state_dict())
    method.compute_losses(make_batch())["loss"].backward()
    assert all(p.grad is None for p in encoder.parameters())


def test_rl_kd_and_mt_bert_on_mlm_logits():
    batch = make_batch("mlm")
    for strategy in (RLKD(num_teachers=2, num_classes=220, positions="all_tokens"), MTBERT(), Uncertainty(reduction="gkd")):
        method = KD(teachers=two_teachers("mlm"), student=student("mlm"), multi_teacher=strategy)
        for _ in range(2):
            terms = method.compute_losses(batch)
            assert torch.isfinite(terms["loss"])

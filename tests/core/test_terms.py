"""Typed loss terms: strategies read a term's role and shape, never its name, so any term a method
computes per example is weighted per example, and a renamed prediction term is still the soft one."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_kd.core.multi_teacher import Average, MultiTeacherStrategy
from lightning_kd.core.passes import merge_combined
from lightning_kd.core.terms import LossTerms, Role, weighted_mean
from lightning_kd.methods.multi_teacher import MTBERT, RLKD, MixMT, Uncertainty
from tests.multi_teacher.helpers import fixed, make_step

LABELS = torch.tensor([0, 1, 1, 0])
Z_T = [
    torch.tensor([[2.0, -1.0], [0.5, 0.3], [-1.0, 1.5], [0.0, 3.0]]),
    torch.tensor([[1.0, 1.0], [-2.0, 2.0], [0.2, -0.2], [4.0, 0.0]]),
]
Z_S = torch.tensor([[0.1, 0.0], [3.0, -3.0], [0.0, 0.5], [-1.0, 1.0]])
# Per teacher: a soft term under a name that is not "soft", a per-example intermediate term and a scalar one.
PRED = [fixed(0.5, 1.0, 1.5, 2.0), fixed(0.2, 0.4, 0.6, 0.8)]
HIDDEN = [fixed(1.0, 0.0, 2.0, 3.0), fixed(4.0, 1.0, 0.0, 1.0)]
PATIENCE = [torch.tensor(3.0), torch.tensor(5.0)]


def typed_terms() -> list[LossTerms]:
    return [LossTerms().soft("prediction_kl", PRED[i]).intermediate("hidden", HIDDEN[i]).intermediate("patience", PATIENCE[i]) for i in range(2)]


def gold_weight(i: int, b: int) -> float:
    row = Z_T[i][b].tolist()
    return 1.0 / (1.0 + math.log(sum(math.exp(v) for v in row)) - row[int(LABELS[b])])


# ---------------------------------------------------------------------- the structure
def test_names_give_default_roles_and_assignment_keeps_a_role():
    terms = LossTerms({"soft": torch.tensor(1.0), "hard": torch.tensor(2.0), "attention": torch.tensor(3.0)})
    assert [terms.role(n) for n in terms] == [Role.SOFT, Role.HARD, Role.INTERMEDIATE]
    terms.soft("logit_kl", torch.tensor(4.0))
    terms["logit_kl"] = 2 * terms["logit_kl"]
    assert terms.role("logit_kl") is Role.SOFT and terms["logit_kl"].item() == 8.0
    student = LossTerms({"mlm": torch.tensor(1.0)}, default=Role.HARD)
    assert student.role("mlm") is Role.HARD
    merged = terms | {"extra": torch.tensor(0.0)}
    assert merged.role("logit_kl") is Role.SOFT and merged.role("extra") is Role.INTERMEDIATE
    assert dict(terms.having(Role.HARD)) == {"hard": terms["hard"]}
    assert "hard" not in terms.without(Role.HARD)


def test_bad_shapes_and_role_clashes_are_refused():
    with pytest.raises(ValueError, match=r"shape \(4, 2\)"):
        LossTerms().intermediate("attention", torch.zeros(4, 2))
    with pytest.raises(TypeError, match="tensor"):
        LossTerms({"soft": 1.0})
    terms = LossTerms().soft("kl", torch.tensor(1.0))
    with pytest.raises(ValueError, match="one name must keep one role"):
        terms.accumulate("kl", torch.tensor(1.0), Role.INTERMEDIATE)
    with pytest.raises(ValueError, match=r"arrived with shape \(\)"):
        LossTerms().soft("kl", torch.tensor(1.0)).check_per_example(4, "MT-BERT")
    with pytest.raises(ValueError, match="3 values for a batch of 4"):
        LossTerms().intermediate("hidden", fixed(1.0, 2.0, 3.0)).check_per_example(4, "MT-BERT")


def test_weighted_mean_weights_per_example_terms_only():
    weights = fixed(1.0, 2.0, 0.0, 1.0)
    assert weighted_mean(LossTerms().intermediate("h", HIDDEN[0]).term("h"), weights).item() == pytest.approx((1 + 0 + 0 + 3) / 4)
    assert weighted_mean(LossTerms().intermediate("p", PATIENCE[0]).term("p"), weights).item() == 3.0


def test_a_strategy_returning_a_student_term_name_is_refused():
    student = LossTerms().hard("hard", torch.tensor(1.0))
    with pytest.raises(ValueError, match="already hold"):
        merge_combined(student, {"hard": torch.tensor(2.0)}, Average())


# ---------------------------------------------------------------------- strategies read roles and shapes
def test_average_keeps_roles_and_averages_every_term():
    terms = Average().combine(typed_terms(), make_step(Z_S, Z_T, LABELS))
    assert terms.role("prediction_kl") is Role.SOFT and terms.role("hidden") is Role.INTERMEDIATE
    assert terms["prediction_kl"].item() == pytest.approx((1.25 + 0.5) / 2)
    assert terms["hidden"].item() == pytest.approx((1.5 + 1.5) / 2)
    assert terms["patience"].item() == pytest.approx(4.0)


def test_mt_bert_weights_every_per_example_term_whatever_its_name():
    terms = MTBERT().combine(typed_terms(), make_step(Z_S, Z_T, LABELS))
    for name, values in (("prediction_kl", PRED), ("hidden", HIDDEN)):
        expected = sum(gold_weight(i, b) * values[i][b].item() / 4 for i in range(2) for b in range(4))
        assert terms[name].item() == pytest.approx(expected, rel=1e-5)
        assert terms.role(name) is (Role.SOFT if name == "prediction_kl" else Role.INTERMEDIATE)
    assert terms["patience"].item() == pytest.approx(8.0)  # a scalar term: summed, unweighted


def test_uncertainty_weights_every_per_example_term():
    terms = Uncertainty().combine(typed_terms(), make_step(Z_S, Z_T, LABELS))
    u = []
    for row in Z_S.tolist():
        probs = [math.exp(v) / sum(math.exp(w) for w in row) for v in row]
        u.append(-sum(p * math.log(p) for p in probs) / math.log(2))
    for name, values in (("prediction_kl", PRED), ("hidden", HIDDEN)):
        expected = sum(2 * (u[b] + (1 - 2 * u[b]) * i) * values[i][b].item() / 4 / 2 for i in range(2) for b in range(4))
        assert terms[name].item() == pytest.approx(expected, rel=1e-5)
    assert terms["patience"].item() == pytest.approx(4.0)


def test_rl_kd_weights_every_per_example_term_by_the_actions():
    strategy = RLKD(num_teachers=2, num_classes=2)
    terms = strategy.combine(typed_terms(), make_step(Z_S, Z_T, LABELS, student_loss=torch.tensor(0.7)))
    action = strategy._previous[1]
    expected = sum(action[b, i].item() * HIDDEN[i][b].item() for i in range(2) for b in range(4)) / 8
    assert terms["hidden"].item() == pytest.approx(expected, rel=1e-6, abs=1e-7)
    assert terms.role("agent") is Role.STRATEGY


def test_a_per_example_strategy_refuses_a_scalar_soft_term_under_any_name():
    scalar = [LossTerms().soft("prediction_kl", p.mean()) for p in PRED]
    with pytest.raises(ValueError, match="'prediction_kl' arrived with shape"):
        MTBERT().combine(scalar, make_step(Z_S, Z_T, LABELS))


def test_mix_mt_finds_the_hard_term_by_role():
    class AddsHard(MultiTeacherStrategy):
        def combine(self, per_teacher, step):
            return LossTerms().hard("student_ce", torch.tensor(1.0))  # not called "hard"

    with pytest.raises(ValueError, match="hard term 'student_ce'"):
        MixMT([Average(), AddsHard()]).combine(typed_terms(), make_step(Z_S, Z_T, LABELS))
    # A hard term among a method's per-teacher terms is averaged once, outside the children.
    with_hard = [t | LossTerms().hard("task_ce", torch.tensor(float(i + 1))) for i, t in enumerate(typed_terms())]
    terms = MixMT([Average(), MTBERT()]).combine(with_hard, make_step(Z_S, Z_T, LABELS))
    assert terms["task_ce"].item() == pytest.approx(1.5) and terms.role("task_ce") is Role.HARD
    assert not any(name.endswith("task_ce") and name != "task_ce" for name in terms)

"""Each strategy's weights and combined terms against written-out formulas on fixed tensors."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_kd.core.multi_teacher import MultiTeacherStrategy
from lightning_kd.methods.multi_teacher import (
    DGKD,
    MTBERT,
    RLKD,
    TMKD,
    Average,
    MixMT,
    Uncertainty,
)
from lightning_kd.methods.multi_teacher.dgkd import survival_draw
from lightning_kd.methods.multi_teacher.mt_bert import teacher_gold_loss
from lightning_kd.methods.multi_teacher.uncertainty import (
    student_uncertainty,
    uncertainty_weights,
)
from tests.multi_teacher.helpers import fixed, make_step

# Two teachers, a batch of 4, two classes.
LABELS = torch.tensor([0, 1, 1, 0])
Z_T = [
    torch.tensor([[2.0, -1.0], [0.5, 0.3], [-1.0, 1.5], [0.0, 3.0]]),
    torch.tensor([[1.0, 1.0], [-2.0, 2.0], [0.2, -0.2], [4.0, 0.0]]),
]
Z_S = torch.tensor([[0.1, 0.0], [3.0, -3.0], [0.0, 0.5], [-1.0, 1.0]])
SOFT = [fixed(0.5, 1.0, 1.5, 2.0), fixed(0.2, 0.4, 0.6, 0.8)]
PATIENCE = [fixed(3.0).squeeze(), fixed(5.0).squeeze()]


def ce(logits_row, label):
    exps = [math.exp(v) for v in logits_row]
    return -math.log(exps[label] / sum(exps))


def entropy_ratio(logits_row):
    exps = [math.exp(v) for v in logits_row]
    probs = [e / sum(exps) for e in exps]
    return -sum(p * math.log(p) for p in probs) / math.log(len(probs))


def per_teacher(with_patience=True):
    return [{"soft": SOFT[i], **({"patience": PATIENCE[i]} if with_patience else {})} for i in range(2)]


# ---------------------------------------------------------------------- Average / TMKD / DGKD
def test_tmkd_is_the_average():
    step = make_step(Z_S, Z_T, LABELS)
    terms = TMKD().combine(per_teacher(), step)
    assert isinstance(TMKD(), Average)
    assert terms["soft"].item() == pytest.approx((1.25 + 0.5) / 2)
    assert terms["patience"].item() == pytest.approx(4.0)


@pytest.mark.parametrize("sum_losses", [False, True])
def test_dgkd_sums_or_averages_the_survivors(sum_losses):
    step = make_step(Z_S, Z_T, LABELS)
    terms = DGKD(survival_p=0.5, sum_losses=sum_losses).combine(per_teacher(), step)
    scale = 1.0 if sum_losses else 0.5
    assert terms["soft"].item() == pytest.approx(scale * (1.25 + 0.5))
    assert terms["patience"].item() == pytest.approx(scale * 8.0)
    assert "hard" not in terms  # the hard loss is the method's own term, never the strategy's


def test_dgkd_draws_are_seeded_by_seed_and_step():
    a, b = DGKD(survival_p=0.5, seed=7), DGKD(survival_p=0.5, seed=7)  # two "ranks"
    draws = [a.select_teachers(6, step) for step in range(40)]
    assert draws == [b.select_teachers(6, step) for step in range(40)]
    assert len({tuple(d) for d in draws}) > 5  # varies across steps
    assert draws != [DGKD(survival_p=0.5, seed=8).select_teachers(6, step) for step in range(40)]
    assert DGKD(survival_p=1.0).select_teachers(3, 5) == [0, 1, 2]


def test_dgkd_keeps_at_least_one_teacher_and_survives_at_rate_p():
    assert all(len(survival_draw(3, 0.01, 0, step)) >= 1 for step in range(200))
    kept = sum(len(survival_draw(4, 0.75, 0, step)) for step in range(2000))
    assert kept / 8000 == pytest.approx(0.75, abs=0.03)


def test_dgkd_draws_ignore_the_global_random_state():
    # Ranks seed their global RNGs differently (or consume them differently); the draw must not care.
    torch.manual_seed(0)
    first = [survival_draw(5, 0.5, 3, s) for s in range(10)]
    torch.manual_seed(1234)
    torch.rand(17)
    assert [survival_draw(5, 0.5, 3, s) for s in range(10)] == first


def test_dgkd_rejects_a_bad_probability():
    with pytest.raises(ValueError, match="survival_p"):
        DGKD(survival_p=0.0)


# ---------------------------------------------------------------------- MT-BERT
def test_mt_bert_weights_each_example_by_the_teachers_gold_loss():
    step = make_step(Z_S, Z_T, LABELS)
    terms = MTBERT().combine(per_teacher(), step)
    expected = 0.0
    for i in range(2):
        for b in range(4):
            weight = 1.0 / (1.0 + ce(Z_T[i][b].tolist(), int(LABELS[b])))
            expected += weight * SOFT[i][b].item() / 4
    assert terms["soft"].item() == pytest.approx(expected, rel=1e-5)
    assert terms["patience"].item() == pytest.approx(3.0 + 5.0)  # summed, not averaged, and unweighted


def test_mt_bert_weights_are_detached():
    logits = [z.clone().requires_grad_(True) for z in Z_T]
    soft = [s.clone().requires_grad_(True) for s in SOFT]
    terms = MTBERT().combine([{"soft": s} for s in soft], make_step(Z_S, logits, LABELS))
    terms["soft"].backward()
    assert all(z.grad is None for z in logits)
    assert soft[0].grad is not None


def test_mt_bert_needs_per_sample_soft_terms_and_labels():
    with pytest.raises(ValueError, match="per example"):
        MTBERT().combine([{"soft": fixed(1.0).squeeze()}] * 2, make_step(Z_S, Z_T, LABELS))
    step = make_step(Z_S, Z_T, LABELS)
    del step.batch["labels"]
    with pytest.raises(ValueError, match="labels"):
        MTBERT().combine(per_teacher(), step)


def test_teacher_gold_loss_forms():
    assert teacher_gold_loss(Z_T[0], LABELS)[1].item() == pytest.approx(ce([0.5, 0.3], 1), rel=1e-6)
    regression = teacher_gold_loss(torch.tensor([[0.5], [2.0]]), torch.tensor([1.0, 1.0]))
    assert regression.tolist() == pytest.approx([0.25, 1.0])
    tokens = torch.zeros(2, 3, 4)
    tokens[0, 0, 1] = 2.0
    labels = torch.tensor([[1, -100, 2], [-100, -100, -100]])
    expected = (ce([0.0, 2.0, 0.0, 0.0], 1) + ce([0.0] * 4, 2)) / 2
    assert teacher_gold_loss(tokens, labels).tolist() == pytest.approx([expected, 0.0], rel=1e-6)


# ---------------------------------------------------------------------- Uncertainty
def test_student_uncertainty_is_the_normalised_entropy():
    u = student_uncertainty(Z_S)
    assert u.tolist() == pytest.approx([entropy_ratio(row) for row in Z_S.tolist()], rel=1e-5)
    tokens = torch.tensor([[[0.0, 0.0, 0.0], [3.0, 0.0, 0.0]]])
    mask = torch.tensor([[False, True]])
    assert student_uncertainty(tokens, mask).item() == pytest.approx(entropy_ratio([3.0, 0.0, 0.0]), rel=1e-5)
    # gkd parity: the masked position counts as a uniform prediction (u = 1) and every position is averaged
    gkd = student_uncertainty(tokens, mask, "gkd").item()
    assert gkd == pytest.approx((1.0 + entropy_ratio([3.0, 0.0, 0.0])) / 2, rel=1e-5)


def test_uncertainty_refuses_one_class_logits():
    with pytest.raises(ValueError, match="at least 2 classes"):
        student_uncertainty(torch.zeros(4, 1))


def test_soft_weights_match_the_formula_for_two_and_three_teachers():
    u = fixed(0.0, 0.25, 0.9)
    two = uncertainty_weights(u, 2, "soft")
    torch.testing.assert_close(two, torch.tensor([[2 * v, 2 * (1 - v)] for v in u.tolist()]))
    three = uncertainty_weights(u, 3, "soft")
    for b, v in enumerate(u.tolist()):
        raw = [v + (1 - 2 * v) * j / 2 for j in range(3)]
        assert three[b].tolist() == pytest.approx([3 * r / sum(raw) for r in raw])


def test_hard_weights_send_the_most_uncertain_share_to_the_smallest_teacher():
    u = fixed(0.1, 0.9, 0.5, 0.7, 0.3)  # ranks by decreasing u: b1=1, b3=2, b2=3, b4=4, b0=5
    hard = uncertainty_weights(u, 3, "hard")
    # teacher rank ⌈ρ·3/5⌉−1: ρ=1→0, 2→1, 3→1, 4→2, 5→2
    expected_rank = {1: 0, 3: 1, 2: 1, 4: 2, 0: 2}
    for b, rank in expected_rank.items():
        assert hard[b].tolist() == [1.0 if j == rank else 0.0 for j in range(3)]
    # fewer examples than teachers: soft weights
    assert torch.equal(uncertainty_weights(u[:2], 3, "hard"), uncertainty_weights(u[:2], 3, "soft"))


@pytest.mark.parametrize("order", [None, [1, 0]])
def test_uncertainty_combines_with_rank_weights(order):
    step = make_step(Z_S, Z_T, LABELS)
    terms = Uncertainty(teacher_order=order).combine(per_teacher(), step)
    u = [entropy_ratio(row) for row in Z_S.tolist()]
    ranks = order or [0, 1]
    expected = 0.0
    for i in range(2):
        for b in range(4):
            weight = 2 * (u[b] + (1 - 2 * u[b]) * ranks[i])
            expected += weight * SOFT[i][b].item() / 4 / 2
    assert terms["soft"].item() == pytest.approx(expected, rel=1e-5)
    assert terms["patience"].item() == pytest.approx(4.0)


def test_uncertainty_hard_mode_total():
    step = make_step(Z_S, Z_T, LABELS)
    terms = Uncertainty(mode="hard").combine(per_teacher(False), step)
    u = [entropy_ratio(row) for row in Z_S.tolist()]
    by_uncertainty = sorted(range(4), key=lambda b: -u[b])
    small, large = by_uncertainty[:2], by_uncertainty[2:]
    expected = (sum(SOFT[0][b].item() for b in small) + sum(SOFT[1][b].item() for b in large)) / 4 / 2
    assert terms["soft"].item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("detach", [True, False])
def test_uncertainty_weight_gradient_follows_detach_weights(detach):
    logits = Z_S.clone().requires_grad_(True)
    step = make_step(logits, Z_T, LABELS)
    terms = Uncertainty(detach_weights=detach).combine(per_teacher(False), step)
    if detach:
        assert not terms["soft"].requires_grad
    else:
        (grad,) = torch.autograd.grad(terms["soft"], logits)
        assert grad.abs().sum() > 0


def test_uncertainty_bad_arguments():
    with pytest.raises(ValueError, match="permutation"):
        Uncertainty(teacher_order=[0, 2])
    with pytest.raises(ValueError, match="one rank per teacher"):
        Uncertainty(teacher_order=[0, 1, 2]).combine(per_teacher(), make_step(Z_S, Z_T, LABELS))


# ---------------------------------------------------------------------- RL-KD
def rl_strategy(**kwargs):
    strategy = RLKD(num_teachers=2, num_classes=2, **kwargs)
    with torch.no_grad():  # σ = 0.5 everywhere: a known π whatever the action
        for p in strategy.agent.parameters():
            p.zero_()
    return strategy


def test_rl_kd_student_terms_are_the_action_weighted_mean():
    strategy = rl_strategy()
    loss = torch.tensor(0.7)
    terms = strategy.combine(per_teacher(), make_step(Z_S, Z_T, LABELS, student_loss=loss))
    action = strategy._previous[1]
    expected_soft = sum(action[b, i].item() * SOFT[i][b].item() for i in range(2) for b in range(4)) / 8
    expected_patience = sum(action[b, i].item() * PATIENCE[i].item() for i in range(2) for b in range(4)) / 8
    assert terms["soft"].item() == pytest.approx(expected_soft, rel=1e-6, abs=1e-7)
    assert terms["patience"].item() == pytest.approx(expected_patience, rel=1e-6, abs=1e-7)
    assert terms["agent"].item() == 0.0  # nothing to score on the first step


@pytest.mark.parametrize("objective", ["reference_prob", "reinforce_logprob"])
def test_rl_kd_agent_objective(objective):
    strategy = rl_strategy(objective=objective, agent_weight=0.5)
    strategy.combine(per_teacher(), make_step(Z_S, Z_T, LABELS, student_loss=torch.tensor(0.9)))
    terms = strategy.combine(per_teacher(), make_step(Z_S, Z_T, LABELS, student_loss=torch.tensor(0.7)))
    reward = -0.7  # R = −L_hard of the current batch; π = 0.5 for each of the 4×2 previous actions
    expected = -(8 * 0.5) * reward if objective == "reference_prob" else -(8 * math.log(0.5)) * reward
    assert terms["agent"].item() == pytest.approx(0.5 * expected, rel=1e-6)


def test_rl_kd_rewards_and_baseline():
    step = make_step(Z_S, Z_T, LABELS, student_loss=torch.tensor(0.7))
    strategy = rl_strategy(reward="student_and_last_teacher")
    state = strategy.state(step)
    last = sum(ce(Z_T[1][b].tolist(), int(LABELS[b])) for b in range(4)) / 4
    assert strategy.reward_value(step, state, torch.ones(4, 2)).item() == pytest.approx(-0.7 - last, rel=1e-6)
    strategy = rl_strategy(reward="student_and_teachers")
    action = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    chosen = (ce(Z_T[0][0].tolist(), 0) + ce(Z_T[1][2].tolist(), 1)) / 2
    assert strategy.reward_value(step, state, action).item() == pytest.approx(-0.7 - chosen, rel=1e-6)

    strategy = rl_strategy(baseline_momentum=0.5)
    for loss in (0.9, 0.7):  # the first scored step sets the baseline to its reward: advantage 0
        terms = strategy.combine(per_teacher(), make_step(Z_S, Z_T, LABELS, student_loss=torch.tensor(loss)))
    assert terms["agent"].item() == 0.0 and strategy.baseline.item() == pytest.approx(-0.7)
    terms = strategy.combine(per_teacher(), make_step(Z_S, Z_T, LABELS, student_loss=torch.tensor(0.5)))
    assert terms["agent"].item() == pytest.approx(-(8 * 0.5) * (-0.5 + 0.7), rel=1e-5)
    assert strategy.baseline.item() == pytest.approx(-0.6)


def test_rl_kd_state():
    from tests.conftest import make_tiny_bert

    encoder = make_tiny_bert(seed=4)  # hidden 32, padded to 40
    strategy = RLKD(num_teachers=2, num_classes=2, semantic_model=encoder, semantic_dim=40)
    batch_ids = torch.randint(5, 200, (4, 6))
    step = make_step(Z_S, Z_T, LABELS)
    step.batch.update(input_ids=batch_ids, attention_mask=torch.ones_like(batch_ids))
    semantic, losses, logits = strategy.state(step)
    with torch.no_grad():
        cls = encoder(input_ids=batch_ids, attention_mask=torch.ones_like(batch_ids), output_hidden_states=True).hidden_states[-1][:, 0]
    assert torch.allclose(semantic[:, :32], cls, atol=1e-6) and semantic[:, 32:].abs().sum() == 0
    assert losses[2, 1].item() == pytest.approx(ce(Z_T[1][2].tolist(), 1), rel=1e-6)
    assert torch.equal(logits, torch.cat(Z_T, dim=1))
    assert not any(k.startswith("_semantic") or "encoder" in k for k in strategy.state_dict())
    assert all(not p.requires_grad for p in encoder.parameters())


def test_rl_kd_average_stage_and_bad_arguments():
    step = make_step(Z_S, Z_T, LABELS)
    scalar = [{"soft": s.mean()} for s in SOFT]
    assert RLKD(stage="average").combine(scalar, step)["soft"].item() == pytest.approx((1.25 + 0.5) / 2)
    assert RLKD(stage="average").agent is None and not RLKD(stage="average").per_sample
    with pytest.raises(ValueError, match="do not apply"):
        RLKD(stage="average", num_teachers=2)
    with pytest.raises(ValueError, match="num_teachers"):
        RLKD(stage="rl")
    with pytest.raises(ValueError, match="semantic_model"):
        RLKD(num_teachers=2, num_classes=2, semantic_dim=8)
    with pytest.raises(ValueError, match="num_classes=3"):
        RLKD(num_teachers=2, num_classes=3).combine(per_teacher(), make_step(Z_S, Z_T, LABELS, student_loss=torch.tensor(1.0)))


# ---------------------------------------------------------------------- MixMT
def test_mix_mt_sums_prefixed_strategy_terms():
    step = make_step(Z_S, Z_T, LABELS)
    mix = MixMT([Average(), MTBERT()])
    assert mix.per_sample
    terms = mix.combine(per_teacher(), step)
    assert set(terms) == {"average.soft", "average.patience", "mtbert.soft", "mtbert.patience"}
    assert terms["average.soft"].item() == pytest.approx((1.25 + 0.5) / 2)
    assert terms["mtbert.soft"].item() == pytest.approx(MTBERT().combine(per_teacher(), step)["soft"].item())
    assert terms["mtbert.patience"].item() == pytest.approx(8.0)


def test_mix_mt_gives_each_strategy_its_own_teachers():
    mix = MixMT([DGKD(survival_p=0.3, sum_losses=True, seed=1), Average()])
    step_number = next(s for s in range(100) if len(survival_draw(2, 0.3, 1, s)) == 1)
    indices = mix.select_teachers(2, step_number)
    assert indices == [0, 1]  # the union: Average wants both
    survivor = survival_draw(2, 0.3, 1, step_number)[0]
    terms = mix.combine(per_teacher(), make_step(Z_S, Z_T, LABELS, indices=indices, step=step_number))
    assert terms["dgkd.soft"].item() == pytest.approx(SOFT[survivor].mean().item())
    assert terms["average.soft"].item() == pytest.approx((1.25 + 0.5) / 2)


def test_mix_mt_never_counts_a_hard_term():
    class AddsHard(MultiTeacherStrategy):
        def combine(self, per_teacher, step):
            return {"hard": torch.tensor(1.0)}

    with pytest.raises(ValueError, match="hard"):
        MixMT([Average(), AddsHard()]).combine(per_teacher(), make_step(Z_S, Z_T, LABELS))
    with pytest.raises(ValueError, match="at least two"):
        MixMT([Average()])
    with pytest.raises(ValueError, match="more than once"):
        MixMT([Average(), Average()])

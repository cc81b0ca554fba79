"""Strategies that read token (MLM) logits give the same per-example values from compact rows as from
whole logits: MT-BERT's gold loss, Uncertainty's weights, RL-KD's state and agent objective."""

from __future__ import annotations

import pytest
import torch

from lightning_kd.core.features import Features
from lightning_kd.core.logit_rows import row_mask
from lightning_kd.core.multi_teacher import TeacherStep
from lightning_kd.methods.multi_teacher import RLKD, MixMT, Uncertainty
from lightning_kd.methods.multi_teacher.mt_bert import teacher_gold_loss
from tests.conftest import make_batch

B, N, V = 4, 12, 30


def _logits(seed: int) -> torch.Tensor:
    return torch.randn(B, N, V, generator=torch.Generator().manual_seed(seed)) * 2


def _steps(student_kind: str, teacher_kind: str) -> tuple[TeacherStep, TeacherStep]:
    """The same step with whole logits and with compact rows of the given kinds."""
    batch = make_batch("mlm", vocab_size=V)
    student, teachers = _logits(0), [_logits(1), _logits(2)]
    s_rows, t_rows = row_mask(batch, student_kind), row_mask(batch, teacher_kind)
    whole = TeacherStep(batch, Features(logits=student, loss=torch.tensor(2.0)), teachers, [0, 1], 0)
    compact = TeacherStep(batch, Features(logits=student[s_rows], loss=torch.tensor(2.0), logit_rows=s_rows),
                          [t[t_rows] for t in teachers], [0, 1], 0, [t_rows, t_rows])
    return whole, compact


def test_mt_bert_gold_loss_from_compact_rows():
    batch = make_batch("mlm", vocab_size=V)
    logits = _logits(3)
    for kind in ("labelled", "tokens"):
        rows = row_mask(batch, kind)
        torch.testing.assert_close(teacher_gold_loss(logits[rows], batch["labels"], rows), teacher_gold_loss(logits, batch["labels"]))
    unlabelled = batch["attention_mask"].bool() & batch["labels"].eq(-100)
    with pytest.raises(ValueError, match="every labelled position"):
        teacher_gold_loss(logits[unlabelled], batch["labels"], unlabelled)


@pytest.mark.parametrize("positions", ["masked_tokens", "all_tokens"])
@pytest.mark.parametrize("reduction", ["masked_mean", "gkd"])
def test_uncertainty_weights_from_compact_rows(positions, reduction):
    strategy = Uncertainty(positions=positions, reduction=reduction)
    whole, compact = _steps(strategy.student_logit_rows(), "labelled")
    torch.testing.assert_close(strategy.weights(compact), strategy.weights(whole))


@pytest.mark.parametrize("positions", ["masked_tokens", "all_tokens", "all_positions"])
def test_rl_kd_state_and_agent_from_compact_rows(positions):
    strategy = RLKD(num_teachers=2, num_classes=V, positions=positions)
    kind = strategy.teacher_logit_rows()
    assert kind == {"masked_tokens": "labelled", "all_tokens": "tokens", "all_positions": "all"}[positions]
    whole, compact = _steps("labelled", kind) if kind != "all" else (_steps("labelled", "labelled")[0],) * 2
    for got, want in zip(strategy.state(compact), strategy.state(whole)):
        torch.testing.assert_close(got, want)
    terms = {"soft": torch.ones(B)}
    for step in (whole, compact):  # two steps each: the second scores the first step's action
        strategy._previous = None
        torch.manual_seed(0)
        strategy.combine([terms, terms], step)
        step.result = strategy.combine([terms, terms], step)
    torch.testing.assert_close(compact.result["agent"], whole.result["agent"])


def test_mix_mt_reads_what_its_strategies_read():
    mix = MixMT([Uncertainty(positions="all_tokens"), RLKD(num_teachers=2, num_classes=V)])
    assert mix.student_logit_rows() == "tokens" and mix.teacher_logit_rows() == "labelled"
    assert mix.needs_student_loss, "RL-KD's reward is the student's loss"

"""Several teachers: per-teacher precision, sequential runs, the Average strategy, teacher selection."""

from __future__ import annotations

import pytest
import torch

from lightning_kd.core.multi_teacher import Average, MultiTeacherStrategy, TeacherStep
from lightning_kd.losses.prediction import PredictionLoss
from lightning_kd.methods import KD
from tests.conftest import make_batch, make_tiny_bert


def test_each_teacher_keeps_its_own_precision_and_losses_stay_float32():
    teachers = [make_tiny_bert(seed=1), make_tiny_bert(seed=3, layers=2, hidden=48)]
    method = KD(teachers=teachers, student=make_tiny_bert(seed=2, layers=2, hidden=16), teacher_precision=["bfloat16", "float32"])
    assert next(method.teachers[0].parameters()).dtype == torch.bfloat16
    assert next(method.teachers[1].parameters()).dtype == torch.float32
    terms = method.compute_losses(make_batch())
    assert terms["soft"].dtype == torch.float32 and torch.isfinite(terms["loss"])
    with pytest.raises(ValueError, match="one per teacher"):
        KD(teachers=teachers, student=make_tiny_bert(seed=2, layers=2, hidden=16), teacher_precision=["bfloat16"])


def test_average_is_the_mean_over_teachers_of_each_term():
    student, batch = make_tiny_bert(seed=2, layers=2, hidden=16), make_batch()
    t1, t2 = make_tiny_bert(seed=1), make_tiny_bert(seed=5)
    both = KD(teachers=[t1, t2], student=student, prediction=PredictionLoss(temperature=2.0)).eval().compute_losses(batch)
    first = KD(teacher=t1, student=student, prediction=PredictionLoss(temperature=2.0)).eval().compute_losses(batch)
    second = KD(teacher=t2, student=student, prediction=PredictionLoss(temperature=2.0)).eval().compute_losses(batch)
    torch.testing.assert_close(both["soft"], (first["soft"] + second["soft"]) / 2)
    torch.testing.assert_close(both["hard"], first["hard"])  # the hard loss is counted once, outside the strategy


class _FirstOnly(MultiTeacherStrategy):
    per_sample = True

    def select_teachers(self, num_teachers: int, step: int) -> list[int]:
        return [0]

    def combine(self, per_teacher, step: TeacherStep):
        assert step.teacher_indices == [0] and len(step.teacher_logits) == 1
        assert per_teacher[0]["soft"].shape == (step.batch["input_ids"].shape[0],)
        return {name: value.mean() for name, value in per_teacher[0].items()}


def test_strategies_choose_teachers_and_may_receive_per_sample_soft_terms():
    teachers = [make_tiny_bert(seed=1), make_tiny_bert(seed=5)]
    calls = []
    teachers[1].register_forward_hook(lambda *args: calls.append(1))
    method = KD(teachers=teachers, student=make_tiny_bert(seed=2, layers=2, hidden=16), multi_teacher=_FirstOnly())
    terms = method.compute_losses(make_batch())
    assert not calls, "an unselected teacher must not run"
    assert torch.isfinite(terms["loss"])
    assert isinstance(Average(), MultiTeacherStrategy)

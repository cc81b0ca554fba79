"""``DistillationModule.run_pass``: the one way a method runs a pass with its own interventions."""

from __future__ import annotations

from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch

from lightning_kd.core.features import FeatureRequest
from lightning_kd.core.passes import entered, forward_hook, forward_pre_hook, total_loss
from lightning_kd.losses.prediction import PredictionLoss
from lightning_kd.methods import KD
from tests.conftest import make_batch, make_tiny_bert


def _kd(teachers: int = 1, **kwargs) -> KD:
    sources = [make_tiny_bert(seed=1 + 2 * i) for i in range(teachers)]
    return KD(teachers=sources, student=make_tiny_bert(seed=2, layers=2, hidden=16), prediction=PredictionLoss(temperature=2.0), **kwargs).eval()


def test_the_default_pass_is_the_step_and_leaves_no_state_behind():
    method, batch = _kd(), make_batch()
    result = method.run_pass(batch)
    step = method.compute_losses(batch)
    assert set(result.terms) == {"soft", "hard"} and result.student.logits.shape == (4, 2)
    for name, value in result.terms.items():
        torch.testing.assert_close(value, step[name])
    assert result.step.teacher_indices == [0] and len(result.per_teacher) == 1
    assert method.pass_index == 0
    with pytest.raises(AttributeError):
        method.pass_index = 1  # set by run_pass only


def test_hooks_are_active_during_their_own_models_forward_only_and_see_the_pass_index():
    method, batch = _kd(), make_batch()
    seen = []
    student_hook = forward_hook(method.student.bert.embeddings, lambda *_: seen.append(("student", method.pass_index)))

    def teacher_hooks(index):
        return [forward_hook(method.teachers[index].bert.embeddings, lambda *_: seen.append(("teacher", method.pass_index)))]

    method.run_pass(batch, pass_index=3, student_hooks=[student_hook], teacher_hooks=teacher_hooks)
    assert seen == [("student", 3), ("teacher", 3)]
    method.run_pass(batch)  # the hooks are gone
    assert len(seen) == 2 and method.pass_index == 0


def test_an_intervention_changes_that_models_output():
    method, batch = _kd(), make_batch()

    def zero_logits(_module, _inputs, output):
        return torch.zeros_like(output)

    result = method.run_pass(batch, teacher_hooks=lambda index: [forward_hook(method.teachers[index].classifier, zero_logits)])
    assert torch.equal(result.step.teacher_logits[0], torch.zeros(4, 2))
    # Against uniform teacher probabilities the soft term is T²·KL(uniform ‖ student).
    log_q = (result.student.logits / 2.0).log_softmax(-1)
    expected = 4.0 * (0.5 * (torch.log(torch.tensor(0.5)) - log_q)).sum(-1).mean()
    torch.testing.assert_close(result.terms["soft"], expected)
    shifted = method.run_pass(batch, student_hooks=[forward_pre_hook(method.student.bert.encoder, lambda m, args: (args[0] + 1.0, *args[1:]))])
    assert not torch.allclose(shifted.student.logits, result.student.logits)


def test_own_requests_run_the_teacher_live_past_a_cache():
    method, batch = _kd(), make_batch()
    method.teacher_cache = SimpleNamespace(teacher_features=lambda *args: pytest.fail("an own request must not be cached"),
                                           check_module=lambda module: None)
    hidden = FeatureRequest(hidden_states=True)
    result = method.run_pass(batch, student_request=hidden, teacher_request=lambda index: hidden)
    assert len(result.student.hidden_states) == 3
    assert result.student.hidden_states[-1].requires_grad


def test_per_teacher_terms_left_uncombined_combine_as_the_default_pass():
    method, batch = _kd(teachers=2), make_batch()
    combined = method.run_pass(batch)
    apart = method.run_pass(batch, combine=False)
    assert set(apart.terms) == {"hard"} and len(apart.per_teacher) == 2
    merged = method.multi_teacher.combine(apart.per_teacher, apart.step)
    torch.testing.assert_close(merged["soft"], combined.terms["soft"])


def test_chosen_teachers_own_terms_and_no_student_loss():
    method, batch = _kd(teachers=2), make_batch()
    ran = []
    result = method.run_pass(
        batch, teachers=[1], student_loss=False,
        teacher_terms=lambda batch, student, teacher, index: ran.append(index) or {"own": teacher.logits.sum() * 0 + index},
    )
    assert ran == [1] and result.step.teacher_indices == [1]
    assert result.terms == {"own": torch.tensor(1.0)} and result.student.loss is None


def test_entered_enters_in_order_and_leaves_in_reverse():
    events = []

    @contextmanager
    def hook(name):
        events.append(f"enter {name}")
        yield
        events.append(f"exit {name}")

    with entered([hook("a"), hook("b")]):
        events.append("forward")
    assert events == ["enter a", "enter b", "forward", "exit b", "exit a"]
    with entered(()):
        pass


def test_total_loss_sums_in_float32_and_refuses_an_empty_step():
    terms = total_loss({"a": torch.tensor(1.0, dtype=torch.bfloat16), "b": torch.tensor(2.0)}, "KD")
    assert terms["loss"].dtype == torch.float32 and terms["loss"].item() == 3.0
    with pytest.raises(RuntimeError, match="KD produced no loss term"):
        total_loss({}, "KD")

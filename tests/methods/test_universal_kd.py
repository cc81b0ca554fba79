"""Universal-KD: contract, intermediate KL against loops, layers used, pooling, errors, two teachers."""

from __future__ import annotations

import pytest
import torch

from lightning_kd.core.features import capture
from lightning_kd.methods import UniversalKD
from tests.conftest import make_batch, make_tiny_bert
from tests.methods.contract import check_contract

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _hidden(model, batch):
    model.eval()
    with torch.no_grad():
        return model(**{k: batch[k] for k in INPUTS}, output_hidden_states=True).hidden_states


@pytest.mark.parametrize("stage", ["classification", "mlm"])
def test_universal_kd_contract(stage, tmp_path):
    # a narrower student: the per-layer projections bridge the widths
    method = UniversalKD(teacher=make_tiny_bert(stage, seed=1), student=make_tiny_bert(stage, seed=2, layers=2, hidden=16))
    check_contract(method, make_batch(stage), tmp_path)


def _loop_ukd(method, hs, ht, mask, pooling):
    """Σ_k mean_b KL(softmax(Σ_j α_kj v_j) ‖ softmax(u_k)), written with explicit loops."""

    def pool(h, b):
        if pooling == "cls":
            return h[b, 0].double()
        if pooling == "mean_with_padding":
            return h[b].double().mean(0)
        keep = [n for n in range(h.shape[1]) if mask[b, n]]
        return h[b, keep].double().mean(0)

    total, batch = 0.0, hs[0].shape[0]
    s_layers, t_layers = method.student_indices, method.teacher_indices[0]
    for k, i in enumerate(s_layers):
        w_s = method.student_projections[k].weight.detach().double()
        for b in range(batch):
            u = w_s @ pool(hs[i], b)
            vs = [method.teacher_projections[0][m].weight.detach().double() @ pool(ht[j], b) for m, j in enumerate(t_layers)]
            alpha = torch.stack([u @ v for v in vs]).softmax(0)
            target = sum(a * v for a, v in zip(alpha, vs))
            p, log_q = target.softmax(0), u.log_softmax(0)
            total += float((p * (p.log() - log_q)).sum()) / batch
    return total


@pytest.mark.parametrize("pooling", ["cls", "mean", "mean_with_padding"])
@pytest.mark.parametrize("layers", ["intermediate", "final"])
def test_intermediate_kl_matches_loops(pooling, layers):
    teacher, student = make_tiny_bert(seed=1), make_tiny_bert(seed=2, layers=3, hidden=16)
    batch = make_batch()
    method = UniversalKD(teacher=teacher, student=student, gamma=0.5, projection_size=6, layers=layers, pooling=pooling).eval()
    terms = method.compute_losses(batch)
    expected = _loop_ukd(method, _hidden(student, batch), _hidden(teacher, batch), batch["attention_mask"], pooling)
    assert terms["intermediate"].item() == pytest.approx(0.5 * expected, rel=1e-4)
    assert set(terms) == {"soft", "intermediate", "loss"}  # seed default: no hard term


@pytest.mark.parametrize(("teacher_depth", "student_depth"), [(12, 6), (12, 4), (6, 3), (12, 5), (12, 7)])
def test_layers_used(teacher_depth, student_depth):
    teacher = make_tiny_bert(seed=1, layers=teacher_depth, hidden=8, heads=2)
    method = UniversalKD(teacher=teacher, student_init="teacher_first", student_layers=student_depth)
    assert method.student_indices == list(range(1, student_depth))
    assert method.teacher_indices == [list(range(1, teacher_depth))]
    assert len(method.student_projections) == student_depth - 1
    assert len(method.teacher_projections[0]) == teacher_depth - 1
    final = UniversalKD(teacher=teacher, student_init="teacher_first", student_layers=student_depth, layers="final")
    assert final.student_indices == [student_depth] and final.teacher_indices == [[teacher_depth]]


def test_projection_size_defaults_to_student_width():
    method = UniversalKD(teacher=make_tiny_bert(seed=1), student=make_tiny_bert(seed=2, layers=2, hidden=16))
    assert method.student_projections[0].weight.shape == (16, 16)
    assert method.teacher_projections[0][0].weight.shape == (16, 32)
    assert method.student_projections[0].bias is None


def test_mean_pooling_ignores_padding():
    teacher, student = make_tiny_bert(seed=1), make_tiny_bert(seed=2, layers=2)
    batch = make_batch()
    changed = {k: v.clone() for k, v in batch.items()}
    changed["input_ids"][batch["attention_mask"] == 0] = 11
    method = UniversalKD(teacher=teacher, student=student, pooling="mean").eval()
    torch.testing.assert_close(method.compute_losses(changed)["intermediate"], method.compute_losses(batch)["intermediate"])


def test_gradients_reach_student_and_both_projections_never_a_teacher():
    teacher, student = make_tiny_bert(seed=1), make_tiny_bert(seed=2, layers=2, hidden=16)
    method = UniversalKD(teacher=teacher, student=student)
    method.compute_losses(make_batch())["loss"].backward()
    assert all(p.grad is None for p in method.teachers.parameters())
    assert method.student_projections[0].weight.grad is not None
    assert all(p.weight.grad is not None for p in method.teacher_projections[0])
    assert student.bert.encoder.layer[0].attention.self.query.weight.grad is not None
    names = [n for n, _ in method.trainable_named_parameters()]
    assert any(n.startswith("teacher_projections.") for n in names)


def test_two_teachers_of_different_depth_and_width():
    t1, t2 = make_tiny_bert(seed=1), make_tiny_bert(seed=3, layers=6, hidden=48)
    method = UniversalKD(teachers=[t1, t2], student=make_tiny_bert(seed=2, layers=2, hidden=16))
    assert [len(p) for p in method.teacher_projections] == [3, 5]
    assert method.teacher_projections[1][0].weight.shape == (16, 48)
    assert torch.isfinite(method.compute_losses(make_batch())["loss"])


def test_per_sample_intermediate_averages_to_the_scalar():
    method = UniversalKD(teacher=make_tiny_bert(seed=1), student=make_tiny_bert(seed=2, layers=2)).eval()
    batch = make_batch()
    s = capture(method.student, batch, method.student_request())
    t = method.run_teacher(0, batch)
    per = method.intermediate_kl(batch, s, t, 0, per_sample=True)
    torch.testing.assert_close(per.mean(), method.intermediate_kl(batch, s, t, 0))


def test_bad_inputs_fail_fast(tiny_teacher):
    with pytest.raises(ValueError, match="StudentOnly"):
        UniversalKD(teacher=tiny_teacher, student_init="teacher_first", student_layers=2, gamma=0)
    with pytest.raises(ValueError, match="projection_size"):
        UniversalKD(teacher=tiny_teacher, student_init="teacher_first", student_layers=2, projection_size=-1)
    with pytest.raises(ValueError, match="layers='final'"):
        UniversalKD(teacher=tiny_teacher, student_init="teacher_first", student_layers=1)
    UniversalKD(teacher=tiny_teacher, student_init="teacher_first", student_layers=1, layers="final")

"""ALP-KD: contract, ALP term against loops, which layers attend to which, errors, two teachers."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_kd.losses.prediction import PredictionLoss
from lightning_kd.methods import ALPKD
from tests.conftest import make_batch, make_tiny_bert
from tests.methods.contract import check_contract

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _hidden(model, batch):
    model.eval()
    with torch.no_grad():
        return model(**{k: batch[k] for k in INPUTS}, output_hidden_states=True).hidden_states


@pytest.mark.parametrize("stage", ["classification", "mlm"])
def test_alp_kd_contract(stage, tmp_path):
    method = ALPKD(teacher=make_tiny_bert(stage, seed=1), student=make_tiny_bert(stage, seed=2, layers=2))
    check_contract(method, make_batch(stage), tmp_path)


def _loop_alp(hs, ht, scale=1.0):
    """Σ_i mean_{b,d}(c^S_i − Σ_j α_ij c^T_j)², α = softmax_j(scale·⟨c^S_i, c^T_j⟩), [CLS] of layers 1..L."""
    total = 0.0
    batch, width = hs[0].shape[0], hs[0].shape[-1]
    for i in range(1, len(hs)):
        for b in range(batch):
            cs = hs[i][b, 0].tolist()
            teachers = [ht[j][b, 0].tolist() for j in range(1, len(ht))]
            scores = [scale * sum(x * y for x, y in zip(cs, ct)) for ct in teachers]
            top = max(scores)
            alpha = [math.exp(s - top) for s in scores]
            alpha = [a / sum(alpha) for a in alpha]
            target = [sum(a * ct[d] for a, ct in zip(alpha, teachers)) for d in range(width)]
            total += sum((x - y) ** 2 for x, y in zip(cs, target)) / (batch * width)
    return total


@pytest.mark.parametrize("scale_scores", [False, True])
def test_alp_term_matches_loops(scale_scores):
    teacher, student = make_tiny_bert(seed=1), make_tiny_bert(seed=2, layers=2)
    batch = make_batch()
    method = ALPKD(teacher=teacher, student=student, alp_weight=0.2, scale_scores=scale_scores, prediction=None).eval()
    expected = _loop_alp(_hidden(student, batch), _hidden(teacher, batch), 1 / math.sqrt(32) if scale_scores else 1.0)
    assert method.compute_losses(batch)["alp"].item() == pytest.approx(0.2 * expected, rel=1e-5)


def test_prediction_terms_use_seed_weights():
    teacher, student = make_tiny_bert(seed=1), make_tiny_bert(seed=2, layers=2)
    with torch.no_grad():
        teacher.classifier.weight.mul_(300.0)
        student.classifier.weight.mul_(300.0)
    batch = make_batch()
    method = ALPKD(
        teacher=teacher,
        student=student,
        prediction=PredictionLoss(soft_weight=0.7, hard_weight=0.1, temperature=20.0, soft_loss="ce", t2_scale=False),
    ).eval()
    terms = method.compute_losses(batch)
    inputs = {k: batch[k] for k in INPUTS}
    with torch.no_grad():
        zs, zt = student(**inputs).logits.double(), teacher(**inputs).logits.double()
    ce = -(zt.div(20).softmax(-1) * zs.div(20).log_softmax(-1)).sum(-1).mean()
    assert terms["soft"].item() == pytest.approx(0.7 * ce.item(), rel=1e-4)
    assert terms["hard"].item() == pytest.approx(0.1 * torch.nn.functional.cross_entropy(zs, batch["labels"]).item(), rel=1e-4)


@pytest.mark.parametrize(("teacher_depth", "student_depth"), [(12, 6), (12, 4), (6, 3), (12, 5), (12, 7)])
def test_every_student_layer_attends_over_every_teacher_layer(teacher_depth, student_depth):
    teacher = make_tiny_bert(seed=1, layers=teacher_depth, hidden=8, heads=2)
    method = ALPKD(teacher=teacher, student_init="teacher_first", student_layers=student_depth, prediction=None)
    batch = make_batch()
    from lightning_kd.core.features import capture

    s = capture(method.student, batch, method.student_request())
    t = method.run_teacher(0, batch)
    # student [CLS] of H_1..H_{L_S} (final included, no embeddings) against teacher H_1..H_{L_T}
    assert method.layer_vectors(s, "first").shape == (4, student_depth, 8)
    assert method.layer_vectors(t, "first").shape == (4, teacher_depth, 8)
    torch.testing.assert_close(method.layer_vectors(t, "first")[:, -1], t.hidden_states[teacher_depth][:, 0])


def test_padding_cannot_matter_and_gradients_reach_the_student_only():
    teacher, student = make_tiny_bert(seed=1), make_tiny_bert(seed=2, layers=2)
    method = ALPKD(teacher=teacher, student=student, prediction=None).eval()
    batch = make_batch()
    changed = {k: v.clone() for k, v in batch.items()}
    changed["input_ids"][batch["attention_mask"] == 0] = 9
    torch.testing.assert_close(method.compute_losses(changed)["alp"], method.compute_losses(batch)["alp"])
    method.compute_losses(batch)["loss"].backward()
    assert all(p.grad is None for p in method.teachers.parameters())
    assert student.bert.encoder.layer[1].output.dense.weight.grad is not None


def test_two_teachers_of_different_depth():
    t1, t2 = make_tiny_bert(seed=1), make_tiny_bert(seed=3, layers=6)
    method = ALPKD(teachers=[t1, t2], student=make_tiny_bert(seed=2, layers=2))
    terms = method.compute_losses(make_batch())
    assert torch.isfinite(terms["loss"]) and terms["alp"] > 0


def test_bad_inputs_fail_fast(tiny_teacher):
    with pytest.raises(ValueError, match="equal hidden size"):
        ALPKD(teacher=tiny_teacher, student=make_tiny_bert(seed=2, layers=2, hidden=16))
    with pytest.raises(ValueError, match="use KD"):
        ALPKD(teacher=tiny_teacher, student_init="teacher_first", student_layers=2, alp_weight=0.0)

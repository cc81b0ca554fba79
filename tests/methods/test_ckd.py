"""CKD: contract in both stages, terms against the written-out formulas, layer pairs, masking, errors."""

from __future__ import annotations

import copy

import pytest
import torch

from lightning_kd.losses.prediction import PredictionLoss
from lightning_kd.methods import CKD
from tests.conftest import make_batch, make_tiny_bert
from tests.losses.test_relation import ref_layer_angle, ref_layer_distance, ref_word_angle, ref_word_distance
from tests.methods.contract import check_contract

RELATION_TERMS = {"word_distance", "word_angle", "layer_distance", "layer_angle"}


def hidden(model, batch):
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        return model(**inputs, output_hidden_states=True).hidden_states


def heavy_padding_batch():
    """Rows with 10, 2, 1 (only [CLS]) and 0 real tokens."""
    batch = make_batch(batch=4, length=10)
    for row, real in enumerate([10, 2, 1, 0]):
        batch["attention_mask"][row] = 0
        batch["attention_mask"][row, :real] = 1
        batch["input_ids"][row, real:] = 0
    return batch


@pytest.mark.parametrize("stage", ["classification", "mlm"])
def test_ckd_contract(stage, tmp_path):
    teacher = make_tiny_bert(stage, seed=1)
    student = make_tiny_bert(stage, seed=2, layers=2, hidden=16)
    result = check_contract(CKD(teacher=teacher, student=student), make_batch(stage), tmp_path)
    assert RELATION_TERMS | {"soft", "hard"} <= set(result["first"])


@pytest.mark.parametrize("reduction", ["masked_mean", "gkd"])
def test_ckd_terms_match_written_out_formulas(reduction):
    teacher, student = make_tiny_bert(seed=1), make_tiny_bert(seed=2, layers=2, hidden=16)
    batch = make_batch(batch=3, length=8)
    T = 3.0
    method = CKD(
        teacher=teacher,
        student=student,
        window_size=5,
        word_distance_weight=2.0,
        word_angle_weight=10.0,
        layer_distance_weight=3.0,
        layer_angle_weight=7.0,
        reduction=reduction,
        prediction=PredictionLoss(soft_weight=0.9, hard_weight=0.1, temperature=T, soft_loss="ce", t2_scale=False),
    ).eval()
    terms = method.compute_losses(batch)
    hs, ht = hidden(student, batch), hidden(teacher, batch)
    s = torch.stack(hs, 1)
    t = torch.stack([ht[0], ht[2], ht[4]], 1)  # uniform 4 → 2: boundaries 0, 2, 4
    mask = batch["attention_mask"].bool()
    assert terms["word_distance"].item() == pytest.approx(2.0 * ref_word_distance(s, t, mask, reduction), rel=1e-4)
    assert terms["word_angle"].item() == pytest.approx(10.0 * ref_word_angle(s, t, mask, 5, reduction), rel=1e-4)
    # Tiny BERTs' layers are nearly parallel, so this term is ~1e-9 here (float32 noise level).
    assert terms["layer_distance"].item() == pytest.approx(3.0 * ref_layer_distance(s, t, mask, reduction), rel=1e-4, abs=1e-8)
    assert terms["layer_angle"].item() == pytest.approx(7.0 * ref_layer_angle(s, t, mask, reduction), rel=1e-4)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        zs, zt = student(**inputs).logits.double(), teacher(**inputs).logits.double()
    soft = -(torch.softmax(zt / T, -1) * torch.log_softmax(zs / T, -1)).sum(-1).mean()
    hard = torch.nn.functional.cross_entropy(zs, batch["labels"])
    assert terms["soft"].item() == pytest.approx(0.9 * soft.item(), rel=1e-5)
    assert terms["hard"].item() == pytest.approx(0.1 * hard.item(), rel=1e-5)


@pytest.mark.parametrize(
    "teacher_depth,student_depth,expected",
    [
        (12, 6, [0, 2, 4, 6, 8, 10, 12]),
        (12, 4, [0, 3, 6, 9, 12]),
        (6, 3, [0, 2, 4, 6]),
        (12, 5, [0, 3, 6, 9, 11, 12]),  # front-loaded blocks 3, 3, 3, 2, 1 (spec group 3, §0.1)
        (12, 7, [0, 2, 4, 6, 8, 10, 11, 12]),
    ],
)
def test_ckd_layer_pairs(teacher_depth, student_depth, expected):
    teacher = make_tiny_bert(seed=1, layers=teacher_depth, hidden=16)
    student = make_tiny_bert(seed=2, layers=student_depth, hidden=16)
    method = CKD(teacher=teacher, student=student)
    assert method.teacher_layers == [expected]


def test_ckd_relations_zero_for_a_copy_of_the_teacher():
    teacher = make_tiny_bert(seed=1)
    method = CKD(teacher=teacher, student=copy.deepcopy(teacher), prediction=PredictionLoss(hard_weight=0.0)).eval()
    terms = method.compute_losses(make_batch())
    for name in RELATION_TERMS | {"soft"}:
        assert terms[name].item() == pytest.approx(0.0, abs=1e-6), name


def test_ckd_padding_invariance():
    teacher, student = make_tiny_bert(seed=1), make_tiny_bert(seed=2, layers=2, hidden=16)
    method = CKD(teacher=teacher, student=student).eval()
    batch = make_batch()
    changed = {k: v.clone() for k, v in batch.items()}
    pads = ~batch["attention_mask"].bool()
    changed["input_ids"][pads] = torch.randint(5, 200, (int(pads.sum()),))
    changed["token_type_ids"][pads] = 1
    before, after = method.compute_losses(batch), method.compute_losses(changed)
    for name in RELATION_TERMS:
        torch.testing.assert_close(after[name], before[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reduction", ["masked_mean", "gkd"])
def test_ckd_heavy_padding_gives_finite_loss_and_gradients(reduction):
    teacher, student = make_tiny_bert(seed=1), make_tiny_bert(seed=2, layers=2, hidden=16)
    method = CKD(teacher=teacher, student=student, reduction=reduction)
    method.train()
    terms = method.compute_losses(heavy_padding_batch())
    assert all(torch.isfinite(v) for v in terms.values())
    terms["loss"].backward()
    grads = [p.grad for _, p in method.trainable_named_parameters()]
    assert all(g is None or torch.isfinite(g).all() for g in grads)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in method.teachers.parameters())
    assert all(n.startswith("student.") for n, _ in method.trainable_named_parameters())


def test_ckd_relation_gradients_reach_the_student_only():
    teacher, student = make_tiny_bert(seed=1), make_tiny_bert(seed=2, layers=2, hidden=16)
    method = CKD(teacher=teacher, student=student, prediction=None)
    terms = method.compute_losses(make_batch())
    assert set(terms) == RELATION_TERMS | {"loss"}
    terms["loss"].backward()
    layer_weight = student.bert.encoder.layer[0].attention.self.query.weight
    assert layer_weight.grad is not None and layer_weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_ckd_two_teachers_of_different_depth_and_width():
    t1 = make_tiny_bert(seed=1)
    t2 = make_tiny_bert(seed=3, layers=3, hidden=24)
    method = CKD(teachers=[t1, t2], student=make_tiny_bert(seed=2, layers=2, hidden=16))
    assert method.teacher_layers == [[0, 2, 4], [0, 2, 3]]
    terms = method.compute_losses(make_batch())
    assert torch.isfinite(terms["loss"]) and RELATION_TERMS <= set(terms)


def test_ckd_bad_input_fails_fast(tiny_teacher, tiny_student):
    with pytest.raises(ValueError, match="positive odd"):
        CKD(teacher=tiny_teacher, student=tiny_student, window_size=4)
    with pytest.raises(ValueError, match="only applies to the word-angle term"):
        CKD(teacher=tiny_teacher, student=tiny_student, word_angle_weight=0.0, window_size=5)
    with pytest.raises(ValueError, match="word_distance_weight must be >= 0"):
        CKD(teacher=tiny_teacher, student=tiny_student, word_distance_weight=-1.0)
    no_relations = {
        name: 0.0 for name in ("word_distance_weight", "word_angle_weight", "layer_distance_weight", "layer_angle_weight")
    }
    with pytest.raises(ValueError, match="no loss term"):
        CKD(teacher=tiny_teacher, student=tiny_student, prediction=None, **no_relations)
    with pytest.raises(ValueError, match="only apply to the relation terms"):
        CKD(teacher=tiny_teacher, student=tiny_student, reduction="gkd", **no_relations)
    with pytest.raises(ValueError, match="one teacher hidden-state index"):
        CKD(teacher=tiny_teacher, student=tiny_student, layer_map=[2, 3, 4])
    with pytest.raises(ValueError, match="between 1 and the teacher's number of layers"):
        CKD(teacher=tiny_teacher, student=make_tiny_bert(seed=2, layers=6, hidden=16))
    with pytest.raises(ValueError, match="reduction"):
        CKD(teacher=tiny_teacher, student=tiny_student, reduction="mean")

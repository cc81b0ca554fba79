"""SID: the layer map, the stacked terms against written-out formulas, the prediction-only last stage,
properties (zero for a copy, padding invariance, gradients), the contract, two teachers and errors."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from lightning_kd.callbacks import SIDStages
from lightning_kd.losses.prediction import PredictionLoss
from lightning_kd.methods import SID
from tests.callbacks.runs import fit, tiny
from tests.conftest import make_batch, make_tiny_bert
from tests.methods.contract import check_contract

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@pytest.mark.parametrize(
    ("teacher_depth", "student_depth", "ends"),
    [
        (12, 6, [2, 4, 6, 8, 10, 12]),
        (12, 4, [3, 6, 9, 12]),
        (6, 3, [2, 4, 6]),
        (12, 5, [3, 6, 9, 11, 12]),
        (12, 7, [2, 4, 6, 8, 10, 11, 12]),
    ],
)
def test_teacher_layer_map(teacher_depth, student_depth, ends):
    teacher = make_tiny_bert(seed=1, layers=teacher_depth, hidden=8, heads=2)
    method = SID(teacher=teacher, student_init="teacher_uniform", student_layers=student_depth)
    assert method.teacher_layer_map == [ends] and method.num_stages == student_depth + 1
    method.stage = 2
    assert method.student_request().score_layers == {0, 1}
    assert method.teacher_request(0).score_layers == {ends[0] - 1, ends[1] - 1}


def _method(**knobs):
    return SID(teacher=tiny(layers=4), student=tiny(seed=2, layers=2), **knobs).eval()


def _outputs(model, batch):
    with torch.no_grad():
        out = model.eval()(**{k: batch[k] for k in INPUTS}, output_hidden_states=True, output_attentions=True)
    return out.hidden_states, out.attentions


def _expected(student, teacher, batch, pairs, reduction):
    """Σ_k KL(A_T ‖ A_S) over keys (mean over real or all query rows) and Σ_k mean_b (1 − cos) of [CLS]."""
    hs, att_s = _outputs(student, batch)
    ht, att_t = _outputs(teacher, batch)
    mask = batch["attention_mask"]
    attention = cls = 0.0
    for k, j in pairs:
        p_s, p_t = att_s[k - 1].double(), att_t[j - 1].double()
        total, rows = 0.0, 0
        for b in range(p_s.shape[0]):
            for h in range(p_s.shape[1]):
                for q in range(p_s.shape[2]):
                    if reduction == "masked_mean" and not mask[b, q]:
                        continue
                    rows += 1
                    total += sum(
                        float(p_t[b, h, q, n] * (p_t[b, h, q, n].log() - p_s[b, h, q, n].log()))
                        for n in range(p_s.shape[3])
                        if p_t[b, h, q, n] > 0
                    )
        attention += total / rows
        for b in range(mask.shape[0]):
            u, v = hs[k][b, 0].double(), ht[j][b, 0].double()
            cls += (1 - float(u @ v) / math.sqrt(float(u @ u) * float(v @ v))) / mask.shape[0]
    return attention, cls


@pytest.mark.parametrize("reduction", ["masked_mean", "gkd"])
def test_stacked_terms_match_written_out_formulas(reduction):
    method, batch = _method(reduction=reduction), make_batch()
    with torch.no_grad():  # sharpen the student's attention so the KL is far from 0 (float32 noise)
        for layer in method.student.bert.encoder.layer:
            layer.attention.self.query.weight.mul_(8.0)
    for stage, pairs in ((1, [(1, 2)]), (2, [(1, 2), (2, 4)])):
        method.stage = stage
        terms = method.compute_losses(batch)
        attention, cls = _expected(method.student, method.teachers[0], batch, pairs, reduction)
        assert set(terms) == {"attention", "cls_cosine", "loss"}, "no prediction loss before the last stage"
        assert terms["attention"].item() == pytest.approx(attention, rel=1e-4)
        assert terms["cls_cosine"].item() == pytest.approx(cls, rel=1e-4)
        assert method.last_cls_distance.item() == pytest.approx(cls, rel=1e-4)


def test_last_stage_trains_the_prediction_loss_alone():
    method = _method(prediction=PredictionLoss(soft_weight=1.0, hard_weight=0.5, temperature=2.0))
    method.stage = 3
    batch = make_batch()
    with torch.no_grad():  # spread the logits so the soft term is far from 0
        method.student.classifier.weight.mul_(100.0)
        method.teachers[0].classifier.weight.mul_(100.0)
    terms = method.compute_losses(batch)
    assert set(terms) == {"soft", "hard", "loss"}
    with torch.no_grad():
        zs = method.student(**{k: batch[k] for k in INPUTS}).logits.double()
        zt = method.teachers[0](**{k: batch[k] for k in INPUTS}).logits.double()
    p, log_q = (zt / 2).softmax(-1), (zs / 2).log_softmax(-1)
    expected = 4.0 * (p * (p.log() - log_q)).sum(-1).mean()
    assert terms["soft"].item() == pytest.approx(expected.item(), rel=1e-4)
    assert method.last_cls_distance is None


def test_zero_for_a_copy_of_the_teacher_and_padding_invariant():
    teacher = tiny(layers=4)
    method = SID(teacher=teacher, student=copy.deepcopy(teacher)).eval()
    method.stage = 4
    terms = method.compute_losses(make_batch())
    assert terms["attention"].item() == pytest.approx(0.0, abs=1e-6) and terms["cls_cosine"].item() == pytest.approx(
        0.0, abs=1e-6
    )
    method, batch = _method(), make_batch()
    method.stage = 2
    changed = dict(batch, input_ids=batch["input_ids"].masked_fill(~batch["attention_mask"].bool(), 9))
    with torch.no_grad():
        before, after = method.compute_losses(batch), method.compute_losses(changed)
    for name in ("attention", "cls_cosine"):
        assert after[name].item() == pytest.approx(before[name].item(), rel=1e-6)


def test_gradients_reach_the_matched_student_layers_only():
    method = _method()
    method.stage = 1
    method.compute_losses(make_batch())["loss"].backward()
    layers = method.student.bert.encoder.layer
    assert layers[0].attention.self.query.weight.grad is not None
    assert layers[1].output.dense.weight.grad is None, "stage 1 leaves the layers above it unused"
    assert method.student.classifier.weight.grad is None, "no prediction loss before the last stage"
    assert all(p.grad is None for p in method.teachers[0].parameters())


@pytest.mark.parametrize(("stage_kind", "stage"), [("classification", 1), ("classification", 3), ("mlm", 2)])
def test_sid_contract(stage_kind, stage, tmp_path):
    # a random student of the teacher's shape: a truncated copy starts with almost no loss to reduce
    method = SID(teacher=tiny(stage_kind, layers=4), student=tiny(stage_kind, seed=2, layers=2))
    method.stage = stage
    check_contract(method, make_batch(stage_kind), tmp_path)


def test_two_teachers_of_different_depth():
    method = SID(teachers=[tiny(layers=4), tiny(seed=3, layers=6)], student=tiny(seed=2, layers=2)).eval()
    assert method.teacher_layer_map == [[2, 4], [3, 6]]
    for stage in (1, 2, 3):
        method.stage = stage
        assert torch.isfinite(method.compute_losses(make_batch())["loss"])


def test_bad_inputs_fail_fast(tmp_path):
    teacher = tiny(layers=4)
    with pytest.raises(ValueError, match="equal widths and head counts"):
        SID(teacher=teacher, student=tiny(seed=2, layers=2, hidden=16))
    with pytest.raises(ValueError, match="equal widths and head counts"):
        SID(teacher=teacher, student=tiny(seed=2, layers=2, heads=2))
    with pytest.raises(ValueError, match="prediction"):
        SID(teacher=teacher, student=tiny(seed=2, layers=2), prediction=None)
    method = SID(teacher=teacher, student=tiny(seed=2, layers=2))
    with pytest.raises(RuntimeError, match="SIDStages"):
        method.compute_losses(make_batch())
    method.stage = 4
    with pytest.raises(ValueError, match="1..3"):
        method.compute_losses(make_batch())
    fitted = SID(teacher=teacher, student=tiny(seed=2, layers=2))  # a fit needs no callback: SIDStages is attached
    trainer = fit(fitted, [], tmp_path, max_steps=1)
    (stages,) = [c for c in trainer.callbacks if isinstance(c, SIDStages)]
    assert (stages.time_limit, stages.cosine_threshold, fitted.stage) == ("equal_phases", 0.0, 1)

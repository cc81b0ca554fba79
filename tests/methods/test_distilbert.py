"""DistilBERT: the triple loss against written-out formulas (both reductions, both stages), the
every-other-layer initialisation, properties, contract, errors and two teachers."""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import pytest
import torch

from lightning_kd.losses.prediction import PredictionLoss
from lightning_kd.methods import DistilBERT
from lightning_kd.methods.distilbert import DISTILBERT_PREDICTION
from lightning_kd.models.distilbert_init import spread_teacher_layers
from tests.conftest import make_batch, make_tiny_bert
from tests.methods.contract import check_contract

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _outputs(model, batch):
    with torch.no_grad():
        out = model(**{k: batch[k] for k in INPUTS}, output_hidden_states=True)
    return out.logits.double(), out.hidden_states[-1].double()


def _kl_row(zt, zs, T):
    p = torch.softmax(zt / T, -1).tolist()
    q = torch.softmax(zs / T, -1).tolist()
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))


def _cos_row(a, b):
    na, nb = math.sqrt(float(a @ a)), math.sqrt(float(b @ b))
    return 0.0 if na == 0 or nb == 0 else float(a @ b) / (na * nb)


def _spread_logits(model, factor=50.0):
    with torch.no_grad():
        head = model.cls.predictions.decoder if hasattr(model, "cls") else model.classifier
        head.weight.mul_(factor)
    return model


@pytest.mark.parametrize("ce_positions", ["all_tokens", "masked_tokens", "all_positions"])
@pytest.mark.parametrize("reduction", ["masked_mean", "gkd"])
def test_pretraining_terms_match_formulas(ce_positions, reduction):
    teacher = _spread_logits(make_tiny_bert("mlm", seed=1))
    student = _spread_logits(make_tiny_bert("mlm", seed=2, layers=2))
    batch, T = make_batch("mlm", batch=3, length=6), 2.0
    method = DistilBERT(
        teacher=teacher, student=student, alpha_cos=1.0, cos_positions="all_tokens", reduction=reduction,
        prediction=PredictionLoss(soft_weight=5.0, hard_weight=2.0, temperature=T, soft_positions=ce_positions, reduction=reduction),
    ).eval()
    terms = method.compute_losses(batch)
    zs, hs = _outputs(student, batch)
    zt, ht = _outputs(teacher, batch)
    pad, labels = batch["attention_mask"], batch["labels"]
    B, N = pad.shape
    keep_ce = {"all_tokens": lambda b, n: pad[b, n] == 1, "masked_tokens": lambda b, n: labels[b, n] != -100,
               "all_positions": lambda b, n: True}[ce_positions]
    soft = [_kl_row(zt[b, n], zs[b, n], T) for b in range(B) for n in range(N) if keep_ce(b, n)]
    soft_mean = sum(soft) / (B * N if reduction == "gkd" else len(soft))
    cos_rows = []
    for b in range(B):
        for n in range(N):
            if pad[b, n]:
                cos_rows.append(1 - _cos_row(hs[b, n], ht[b, n]))
            elif reduction == "gkd":  # the reference zeroes masked rows: cosine 0, loss 1
                cos_rows.append(1 - _cos_row(hs[b, n] * 0, ht[b, n] * 0))
    cos_mean = sum(cos_rows) / (B * N if reduction == "gkd" else len(cos_rows))
    mlm = torch.nn.functional.cross_entropy(zs.view(-1, zs.shape[-1]), labels.view(-1), ignore_index=-100).item()
    assert terms["soft"].item() == pytest.approx(5.0 * T * T * soft_mean, rel=1e-4)
    assert terms["cos"].item() == pytest.approx(1.0 * cos_mean, rel=1e-5)
    assert terms["hard"].item() == pytest.approx(2.0 * mlm, rel=1e-5)


def test_cosine_over_mlm_targets_only():
    teacher, student = make_tiny_bert("mlm", seed=1), make_tiny_bert("mlm", seed=2, layers=2)
    batch = make_batch("mlm")
    method = DistilBERT(teacher=teacher, student=student, prediction=replace(DISTILBERT_PREDICTION, soft_weight=0.0, hard_weight=0.0), cos_positions="masked_tokens").eval()
    _, hs = _outputs(student, batch)
    _, ht = _outputs(teacher, batch)
    rows = [1 - _cos_row(hs[b, n], ht[b, n]) for b, n in batch["labels"].ne(-100).nonzero().tolist()]
    assert set(method.compute_losses(batch)) == {"cos", "loss"}
    assert method.compute_losses(batch)["cos"].item() == pytest.approx(sum(rows) / len(rows), rel=1e-5)


def test_finetuning_terms_match_formulas():
    teacher, student = _spread_logits(make_tiny_bert(seed=1)), _spread_logits(make_tiny_bert(seed=2, layers=2))
    batch, T = make_batch(), 3.0
    method = DistilBERT(teacher=teacher, student=student, prediction=replace(DISTILBERT_PREDICTION, soft_weight=0.5, hard_weight=0.25, temperature=T), alpha_cos=2.0).eval()
    terms = method.compute_losses(batch)
    zs, hs = _outputs(student, batch)
    zt, ht = _outputs(teacher, batch)
    B = zs.shape[0]
    soft = sum(_kl_row(zt[b], zs[b], T) for b in range(B)) / B
    hard = torch.nn.functional.cross_entropy(zs, batch["labels"]).item()
    cos = [1 - _cos_row(hs[b, n], ht[b, n]) for b, n in batch["attention_mask"].nonzero().tolist()]
    assert terms["soft"].item() == pytest.approx(0.5 * T * T * soft, rel=1e-4)
    assert terms["hard"].item() == pytest.approx(0.25 * hard, rel=1e-5)
    assert terms["cos"].item() == pytest.approx(2.0 * sum(cos) / len(cos), rel=1e-5)


# ---------------------------------------------------------------- initialisation
@pytest.mark.parametrize(
    "depths, expected",
    [((12, 6), [0, 2, 4, 7, 9, 11]), ((12, 4), [0, 4, 7, 11]), ((6, 3), [0, 3, 5]), ((12, 5), [0, 3, 6, 8, 11]),
     ((12, 7), [0, 2, 4, 6, 7, 9, 11]), ((24, 6), [0, 5, 9, 14, 18, 23]), ((4, 1), [3])],
)
def test_spread_teacher_layers(depths, expected):
    assert spread_teacher_layers(*depths) == expected


def test_every_other_layer_initialisation_through_student_init():
    teacher = make_tiny_bert("mlm", seed=1)
    layers = spread_teacher_layers(4, 2)
    method = DistilBERT(teacher=teacher, student_init="teacher_layers", student_layers=layers)
    assert layers == [0, 3]
    student_layer, teacher_layer = method.student.bert.encoder.layer[1], teacher.bert.encoder.layer[3]
    torch.testing.assert_close(student_layer.output.dense.weight, teacher_layer.output.dense.weight)
    with pytest.raises(ValueError, match="between 1 and 4"):
        spread_teacher_layers(4, 5)


# ---------------------------------------------------------------- properties
def test_zero_when_the_student_is_the_teacher():
    teacher = make_tiny_bert("mlm", seed=1)
    method = DistilBERT(teacher=teacher, student=copy.deepcopy(teacher)).eval()
    terms = method.compute_losses(make_batch("mlm"))
    assert terms["soft"].item() == pytest.approx(0.0, abs=1e-6)
    assert terms["cos"].item() == pytest.approx(0.0, abs=1e-6)
    assert terms["hard"].item() > 0


def test_padding_invariance():
    teacher, student = make_tiny_bert("mlm", seed=1), make_tiny_bert("mlm", seed=2, layers=2)
    method = DistilBERT(teacher=teacher, student=student).eval()
    batch = make_batch("mlm")
    moved = {k: v.clone() for k, v in batch.items()}
    moved["input_ids"][~batch["attention_mask"].bool()] = 99
    before, after = method.compute_losses(batch), method.compute_losses(moved)
    for name in ("soft", "cos", "hard"):
        assert after[name].item() == pytest.approx(before[name].item(), rel=1e-5)


def test_gradients_reach_the_student_only():
    method = DistilBERT(teacher=make_tiny_bert("mlm", seed=1), student=make_tiny_bert("mlm", seed=2, layers=2))
    method.compute_losses(make_batch("mlm"))["loss"].backward()
    assert all(p.grad is None for p in method.teachers.parameters())
    assert method.student.bert.encoder.layer[-1].output.dense.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("stage", ["classification", "mlm"])
def test_contract(stage, tmp_path):
    method = DistilBERT(teacher=make_tiny_bert(stage, seed=1), student=make_tiny_bert(stage, seed=2, layers=2))
    check_contract(method, make_batch(stage), tmp_path)


def test_bad_inputs_fail_at_construction():
    teacher = make_tiny_bert(seed=1)
    narrow = make_tiny_bert(seed=2, layers=2, hidden=16)
    with pytest.raises(ValueError, match="alpha_cos=0"):
        DistilBERT(teacher=teacher, student=narrow)
    DistilBERT(teacher=teacher, student=narrow, alpha_cos=0.0)
    with pytest.raises(ValueError, match="needs token targets"):
        DistilBERT(teacher=teacher, student=make_tiny_bert(seed=2, layers=2), cos_positions="masked_tokens")
    with pytest.raises(ValueError, match="nothing to train"):
        DistilBERT(teacher=teacher, student=narrow, prediction=replace(DISTILBERT_PREDICTION, soft_weight=0, hard_weight=0), alpha_cos=0)
    with pytest.raises(ValueError, match=">= 0"):
        DistilBERT(teacher=teacher, student=narrow, prediction=replace(DISTILBERT_PREDICTION, soft_weight=-1.0))
    with pytest.raises(ValueError, match="ce_positions"):
        DistilBERT(teacher=teacher, student=narrow, prediction=replace(DISTILBERT_PREDICTION, soft_positions="padding"))
    with pytest.raises(ValueError, match="temperature"):
        DistilBERT(teacher=teacher, student=narrow, prediction=replace(DISTILBERT_PREDICTION, temperature=0.0))


def test_two_teachers():
    t1, t2 = make_tiny_bert("mlm", seed=1), make_tiny_bert("mlm", seed=3, layers=6)
    method = DistilBERT(teachers=[t1, t2], student=make_tiny_bert("mlm", seed=2, layers=2))
    terms = method.compute_losses(make_batch("mlm"))
    assert torch.isfinite(terms["loss"]) and terms["cos"] > 0
    # Teachers of another width: only without the cosine term.
    wide = make_tiny_bert("mlm", seed=4, layers=3, hidden=48)
    with pytest.raises(ValueError, match="teacher 1 is 48 wide"):
        DistilBERT(teachers=[t1, wide], student=make_tiny_bert("mlm", seed=2, layers=2))
    method = DistilBERT(teachers=[t1, wide], student=make_tiny_bert("mlm", seed=2, layers=2), alpha_cos=0.0)
    assert torch.isfinite(method.compute_losses(make_batch("mlm"))["loss"])

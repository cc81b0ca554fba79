"""TinyBERT: layer pairs, each term against a written-out formula, properties, contract, errors, two teachers."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from lightning_kd.losses.prediction import PredictionLoss
from lightning_kd.methods import TinyBERT
from lightning_kd.methods.tinybert import tinybert_pairs
from tests.conftest import make_batch, make_tiny_bert
from tests.methods.contract import check_contract

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def manual_scores(model, batch, layer: int) -> torch.Tensor:
    """Pre-softmax scores of ``layer`` rebuilt from the layer's own Q/K modules and its input hidden state."""
    with torch.no_grad():
        out = model(**{k: batch[k] for k in INPUTS}, output_hidden_states=True)
        attention = model.base_model.encoder.layer[layer].attention.self
        h = out.hidden_states[layer]
        heads = model.config.num_attention_heads
        b, n, d = h.shape
        q = attention.query(h).view(b, n, heads, d // heads).transpose(1, 2)
        k = attention.key(h).view(b, n, heads, d // heads).transpose(1, 2)
        return q @ k.transpose(-1, -2) / math.sqrt(d // heads)


def hidden(model, batch):
    with torch.no_grad():
        return model(**{k: batch[k] for k in INPUTS}, output_hidden_states=True).hidden_states


# ---------------------------------------------------------------- layer pairs (the reference's tables)
@pytest.mark.parametrize(
    "depths, hidden_teacher, attention_teacher",
    [
        ((12, 6), [0, 2, 4, 6, 8, 10, 12], [1, 3, 5, 7, 9, 11]),
        ((12, 4), [0, 3, 6, 9, 12], [2, 5, 8, 11]),
        ((6, 3), [0, 2, 4, 6], [1, 3, 5]),
        ((12, 5), [0, 3, 6, 9, 11, 12], [2, 5, 8, 10, 11]),
        ((12, 7), [0, 2, 4, 6, 8, 10, 11, 12], [1, 3, 5, 7, 9, 10, 11]),
        ((24, 10), [0, 3, 6, 9, 12, 15, 18, 21, 22, 23, 24], [2, 5, 8, 11, 14, 17, 20, 21, 22, 23]),
    ],
)
def test_uniform_layer_pairs_match_the_spec(depths, hidden_teacher, attention_teacher):
    teacher_layers, student_layers = depths
    pairs = tinybert_pairs(teacher_layers, student_layers)
    assert pairs["embedding"] == [(0, 0)]
    assert pairs["hidden"] == [(j, hidden_teacher[j]) for j in range(1, student_layers)]
    assert pairs["final"] == [(student_layers, teacher_layers)]
    assert pairs["attention"] == list(enumerate(attention_teacher))


def test_explicit_layer_map():
    pairs = tinybert_pairs(12, 3, [4, 8, 12])
    assert pairs["hidden"] == [(1, 4), (2, 8)] and pairs["final"] == [(3, 12)]
    assert pairs["attention"] == [(0, 3), (1, 7), (2, 11)]


# ---------------------------------------------------------------- terms against formulas
def _spread(model, factor=8.0):
    """Scale Q/K weights so attention scores are far from zero (tiny random models are near-uniform)."""
    with torch.no_grad():
        for layer in model.base_model.encoder.layer:
            layer.attention.self.query.weight.mul_(factor)
            layer.attention.self.key.weight.mul_(factor)
    return model


@pytest.mark.parametrize("reduction", ["masked_mean", "gkd"])
def test_terms_match_written_out_formulas(reduction):
    teacher, student = _spread(make_tiny_bert(seed=1)), _spread(make_tiny_bert(seed=2, layers=2, hidden=16))
    batch = make_batch()
    method = TinyBERT(teacher=teacher, student=student, reduction=reduction).eval()
    terms = method.compute_losses(batch)
    mask = batch["attention_mask"].bool()
    fit = method.intermediate.fit[0]

    # Attention: student layers 0, 1 ↔ teacher layers 1, 3 (4→2 uniform), padded keys zeroed.
    expected_attention = 0.0
    for s_layer, t_layer in [(0, 1), (1, 3)]:
        s, t = manual_scores(student, batch, s_layer), manual_scores(teacher, batch, t_layer)
        keys = mask[:, None, None, :]
        sq = (s.masked_fill(~keys, 0) - t.masked_fill(~keys, 0)) ** 2
        if reduction == "gkd":
            expected_attention += sq.mean().item()
        else:
            real = (mask[:, None, :, None] & keys).expand_as(sq)
            expected_attention += sq[real].mean().item()
    assert terms["attention"].item() == pytest.approx(expected_attention, rel=1e-4)

    # Hidden states: fit(H^S_j) vs H^T_{b_j}, b = 0, 2, 4.
    hs, ht = hidden(student, batch), hidden(teacher, batch)
    with torch.no_grad():
        def mse(j, k):
            diff = (fit(hs[j]) - ht[k]) ** 2
            return diff.mean().item() if reduction == "gkd" else diff[mask].mean().item()

        assert terms["embedding"].item() == pytest.approx(mse(0, 0), rel=1e-5)
        assert terms["hidden"].item() == pytest.approx(mse(1, 2), rel=1e-5)
        assert terms["final"].item() == pytest.approx(mse(2, 4), rel=1e-5)
    assert set(terms) == {"embedding", "attention", "hidden", "final", "loss"}


def test_prediction_stage_is_soft_cross_entropy_at_t1():
    teacher, student = make_tiny_bert(seed=1), make_tiny_bert(seed=2, layers=2, hidden=16)
    with torch.no_grad():
        teacher.classifier.weight.mul_(100.0)
    batch = make_batch()
    gkd = PredictionLoss(soft_weight=1.0, hard_weight=0.0, temperature=1.0, soft_loss="ce", t2_scale=False)
    method = TinyBERT(teacher=teacher, student=student, terms=[], prediction=gkd).eval()
    assert method.intermediate.fit is None  # no hidden-state term, so no (unused) fit layer
    terms = method.compute_losses(batch)
    with torch.no_grad():
        zs, zt = student(**{k: batch[k] for k in INPUTS}).logits, teacher(**{k: batch[k] for k in INPUTS}).logits
    expected = 0.0
    for b in range(zs.shape[0]):
        p = torch.softmax(zt[b].double(), -1).tolist()
        q = torch.softmax(zs[b].double(), -1).tolist()
        expected -= sum(pi * math.log(qi) for pi, qi in zip(p, q))
    assert set(terms) == {"soft", "loss"}
    assert terms["soft"].item() == pytest.approx(expected / zs.shape[0], rel=1e-5)


# ---------------------------------------------------------------- properties
def test_zero_when_the_student_is_the_teacher():
    teacher = make_tiny_bert(seed=1)
    method = TinyBERT(teacher=teacher, student=copy.deepcopy(teacher)).eval()
    with torch.no_grad():
        method.intermediate.fit[0].weight.copy_(torch.eye(32))
        method.intermediate.fit[0].bias.zero_()
    terms = method.compute_losses(make_batch())
    for name in ("embedding", "attention", "hidden", "final"):
        assert terms[name].item() == pytest.approx(0.0, abs=1e-10)


def test_padding_invariance():
    teacher, student = make_tiny_bert(seed=1), make_tiny_bert(seed=2, layers=2, hidden=16)
    method = TinyBERT(teacher=teacher, student=student).eval()
    batch = make_batch()
    moved = {k: v.clone() for k, v in batch.items()}
    pad = ~batch["attention_mask"].bool()
    assert pad.any()
    moved["input_ids"][pad] = 77
    before, after = method.compute_losses(batch), method.compute_losses(moved)
    for name in ("embedding", "attention", "hidden", "final"):
        assert after[name].item() == pytest.approx(before[name].item(), rel=1e-5)


def test_gradients_reach_student_and_fit_layer_only():
    method = TinyBERT(teacher=make_tiny_bert(seed=1), student=make_tiny_bert(seed=2, layers=2, hidden=16))
    method.compute_losses(make_batch())["loss"].backward()
    assert all(p.grad is None for p in method.teachers.parameters())
    assert method.intermediate.fit[0].weight.grad.abs().sum() > 0
    assert method.student.base_model.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0
    assert any(n.startswith("intermediate.fit") for n, _ in method.trainable_named_parameters())


# ---------------------------------------------------------------- contract
@pytest.mark.parametrize("stage", ["classification", "mlm"])
def test_contract_intermediate_stage(stage, tmp_path):
    method = TinyBERT(teacher=make_tiny_bert(stage, seed=1), student=make_tiny_bert(stage, seed=2, layers=2, hidden=16))
    check_contract(method, make_batch(stage), tmp_path)


def test_contract_prediction_stage_kl(tmp_path):
    teacher, student = make_tiny_bert(seed=1), make_tiny_bert(seed=2, layers=2, hidden=16)
    prediction = PredictionLoss(soft_weight=1.0, hard_weight=0.0, temperature=1.0, soft_loss="kl")
    method = TinyBERT(teacher=teacher, student=student, terms=[], prediction=prediction)
    result = check_contract(method, make_batch(), tmp_path)
    assert set(result["first"]) == {"soft", "loss"}


# ---------------------------------------------------------------- errors and multi-teacher
def test_bad_inputs_fail_at_construction():
    teacher, student = make_tiny_bert(seed=1), make_tiny_bert(seed=2, layers=2, hidden=16)
    with pytest.raises(ValueError, match="heads"):
        TinyBERT(teacher=teacher, student=make_tiny_bert(seed=2, layers=2, hidden=16, heads=2))
    TinyBERT(teacher=teacher, student=make_tiny_bert(seed=2, layers=2, hidden=16, heads=2), terms=["hidden", "final"])
    with pytest.raises(ValueError, match="one teacher hidden-state index"):
        TinyBERT(teacher=teacher, student=student, layer_map=[2, 3, 4])
    with pytest.raises(ValueError, match="out of range"):
        TinyBERT(teacher=teacher, student=student, layer_map=[2, 9])
    with pytest.raises(ValueError, match="nothing to train"):
        TinyBERT(teacher=teacher, student=student, terms=[])
    with pytest.raises(ValueError, match="Unknown TinyBERT terms"):
        TinyBERT(teacher=teacher, student=student, terms=["logits"])
    with pytest.raises(ValueError, match="twice"):
        TinyBERT(teacher=teacher, student=student, terms=["hidden", "hidden"])
    with pytest.raises(ValueError, match="one-layer student"):
        TinyBERT(teacher=teacher, student=make_tiny_bert(seed=2, layers=1, hidden=16))
    with pytest.raises(ValueError, match="reduction"):
        TinyBERT(teacher=teacher, student=student, reduction="sum")


def test_two_teachers_of_different_depth_and_width():
    t1, t2 = make_tiny_bert(seed=1), make_tiny_bert(seed=3, layers=6, hidden=48)
    method = TinyBERT(teachers=[t1, t2], student=make_tiny_bert(seed=2, layers=2, hidden=16))
    assert [f.out_features for f in method.intermediate.fit] == [32, 48]
    assert method.intermediate.pairs[1]["attention"] == [(0, 2), (1, 5)]
    terms = method.compute_losses(make_batch())
    assert torch.isfinite(terms["loss"]) and terms["loss"] > 0

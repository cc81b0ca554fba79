"""MiniLMv2: layer choice, Q/K/V relations against loops, properties, contract, errors, two teachers."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from transformers import BertConfig

from lightning_kd.methods import MiniLMv2
from lightning_kd.methods.minilmv2 import (
    MiniLMv2Intermediate,
    MiniLMv2Settings,
    resolve_teacher_layer,
)
from tests.conftest import make_batch, make_tiny_bert
from tests.methods.contract import check_contract

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def manual_projections(model, batch, layer: int):
    """Q, K, V projection outputs ``(B, N, d)`` of ``layer`` from its own modules and input hidden state."""
    with torch.no_grad():
        h = model(**{k: batch[k] for k in INPUTS}, output_hidden_states=True).hidden_states[layer]
        attention = model.base_model.encoder.layer[layer].attention.self
        return attention.query(h), attention.key(h), attention.value(h)


def _softmax(row):
    top = max(row)
    e = [math.exp(v - top) for v in row]
    return [v / sum(e) for v in e]


def _kl(p, q):
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q) if pi > 0)


def _loop_relation(xs, xt, heads, mask=None):
    """Mean over (b, a, i) of KL(Rel_T ‖ Rel_S); relation head a is the a-th contiguous slice of d."""
    ds, dt = xs.shape[-1] // heads, xt.shape[-1] // heads
    total, rows = 0.0, 0
    for b in range(xs.shape[0]):
        keys = [j for j in range(xs.shape[1]) if mask is None or mask[b, j]]
        for a in range(heads):
            s, t = xs[b, :, a * ds : (a + 1) * ds], xt[b, :, a * dt : (a + 1) * dt]
            for i in keys:
                rel_t = _softmax([float(t[i] @ t[j]) / math.sqrt(dt) for j in keys])
                rel_s = _softmax([float(s[i] @ s[j]) / math.sqrt(ds) for j in keys])
                total += _kl(rel_t, rel_s)
                rows += 1
    return total / rows


def _spread(model, factor=6.0):
    with torch.no_grad():
        for layer in model.base_model.encoder.layer:
            for proj in (layer.attention.self.query, layer.attention.self.key, layer.attention.self.value):
                proj.weight.mul_(factor)
    return model


@pytest.mark.parametrize("teacher_layer, t_index", [(-1, 3), (2, 1), (-2, 2)])
@pytest.mark.parametrize("mask_padding", [False, True])
def test_relations_match_loops(teacher_layer, t_index, mask_padding):
    # Student: 2 layers, width 16, 2 heads; teacher: width 32, 4 heads. Relation heads need not be attention heads.
    teacher = _spread(make_tiny_bert(seed=1))
    student = _spread(make_tiny_bert(seed=2, layers=2, hidden=16, heads=2))
    batch = make_batch(batch=3, length=6)
    method = MiniLMv2(
        teacher=teacher, student=student, relation_heads=8, teacher_layer=teacher_layer, mask_padding=mask_padding
    ).eval()
    terms = method.compute_losses(batch)
    mask = batch["attention_mask"] if mask_padding else None
    for name, xs, xt in zip(
        ("query_relation", "key_relation", "value_relation"), manual_projections(student, batch, 1), manual_projections(teacher, batch, t_index)
    ):
        assert terms[name].item() == pytest.approx(_loop_relation(xs, xt, 8, mask), rel=1e-4)
    assert set(terms) == {"query_relation", "key_relation", "value_relation", "loss"}


@pytest.mark.parametrize(
    "depths, layer, expected",
    [((12, 6), 12, 11), ((12, 6), -1, 11), ((12, 4), 8, 7), ((6, 3), -2, 4), ((12, 5), 1, 0), ((24, 7), -12, 12)],
)
def test_layer_choice(depths, layer, expected):
    teacher_depth, student_depth = depths
    t = BertConfig(num_hidden_layers=teacher_depth, hidden_size=48, num_attention_heads=4)
    s = BertConfig(num_hidden_layers=student_depth, hidden_size=24, num_attention_heads=4)
    part = MiniLMv2Intermediate(MiniLMv2Settings(relation_heads=12, teacher_layer=layer), s, [t])
    assert (part.student_layer, part.teacher_layers) == (student_depth - 1, [expected])
    assert resolve_teacher_layer(layer, teacher_depth) == expected


def test_zero_when_the_student_is_the_teacher():
    teacher = _spread(make_tiny_bert(seed=1))
    method = MiniLMv2(teacher=teacher, student=copy.deepcopy(teacher), relation_heads=4).eval()
    terms = method.compute_losses(make_batch())
    for name in ("query_relation", "key_relation", "value_relation"):
        assert terms[name].item() == pytest.approx(0.0, abs=1e-7)


def test_padding_invariance_with_mask_padding():
    teacher, student = _spread(make_tiny_bert(seed=1)), _spread(make_tiny_bert(seed=2, layers=2, hidden=16))
    method = MiniLMv2(teacher=teacher, student=student, relation_heads=4, mask_padding=True).eval()
    batch = make_batch()
    moved = {k: v.clone() for k, v in batch.items()}
    moved["input_ids"][~batch["attention_mask"].bool()] = 99
    before, after = method.compute_losses(batch), method.compute_losses(moved)
    assert after["loss"].item() == pytest.approx(before["loss"].item(), rel=1e-5)
    # Without the option padding is part of the relations (the reference behaviour).
    plain = MiniLMv2(teacher=teacher, student=student, relation_heads=4).eval()
    assert plain.compute_losses(moved)["loss"].item() != pytest.approx(plain.compute_losses(batch)["loss"].item(), rel=1e-5)


def test_gradients_reach_the_student_only():
    method = MiniLMv2(teacher=_spread(make_tiny_bert(seed=1)), student=make_tiny_bert(seed=2, layers=2, hidden=16), relation_heads=4)
    method.compute_losses(make_batch())["loss"].backward()
    assert all(p.grad is None for p in method.teachers.parameters())
    last = method.student.base_model.encoder.layer[-1].attention.self
    assert all(m.weight.grad.abs().sum() > 0 for m in (last.query, last.key, last.value))


@pytest.mark.parametrize("stage", ["classification", "mlm"])
def test_contract(stage, tmp_path):
    teacher = _spread(make_tiny_bert(stage, seed=1))
    method = MiniLMv2(teacher=teacher, student=make_tiny_bert(stage, seed=2, layers=2, hidden=16), relation_heads=4)
    check_contract(method, make_batch(stage), tmp_path)


def test_bad_inputs_fail_at_construction():
    teacher, student = make_tiny_bert(seed=1), make_tiny_bert(seed=2, layers=2, hidden=16)
    with pytest.raises(ValueError, match=r"relation_heads=48 must divide both the student width 16 .* e\.g\. 16, 8, 4, 2"):
        MiniLMv2(teacher=teacher, student=student)
    with pytest.raises(ValueError, match="relation_heads=3"):
        MiniLMv2(teacher=teacher, student=student, relation_heads=3)
    with pytest.raises(ValueError, match="does not exist in a 4-layer teacher"):
        MiniLMv2(teacher=teacher, student=student, relation_heads=4, teacher_layer=12)
    with pytest.raises(ValueError, match="does not exist"):
        MiniLMv2(teacher=teacher, student=student, relation_heads=4, teacher_layer=0)
    with pytest.raises(ValueError, match="does not exist"):
        MiniLMv2(teacher=teacher, student=student, relation_heads=4, teacher_layer=-5)
    with pytest.raises(ValueError, match="one per teacher"):
        MiniLMv2(teacher=teacher, student=student, relation_heads=[4, 8])


def test_two_teachers_of_different_depth_and_width():
    t1, t2 = make_tiny_bert(seed=1), make_tiny_bert(seed=3, layers=6, hidden=40)
    student = make_tiny_bert(seed=2, layers=2, hidden=16)
    method = MiniLMv2(teachers=[t1, t2], student=student, relation_heads=[4, 8], teacher_layer=[-1, 5])
    assert method.intermediate.teacher_layers == [3, 4]
    terms = method.compute_losses(make_batch())
    assert torch.isfinite(terms["loss"]) and terms["loss"] > 0
    with pytest.raises(ValueError, match="teacher 1's width 40; valid values divide 8"):
        MiniLMv2(teachers=[t1, t2], student=student, relation_heads=[4, 16])

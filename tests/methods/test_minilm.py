"""MiniLM (v1): last-layer pairs, both terms against loops, GKD double softmax, properties, contract, errors."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from lightning_kd.methods import MiniLM
from tests.conftest import make_batch, make_tiny_bert
from tests.methods.contract import check_contract

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def manual_qkv(model, batch, layer: int):
    """Per-head Q, K, V ``(B, h, N, d_h)`` of ``layer``, from its own modules and its input hidden state."""
    with torch.no_grad():
        h = model(**{k: batch[k] for k in INPUTS}, output_hidden_states=True).hidden_states[layer]
        attention = model.base_model.encoder.layer[layer].attention.self
        heads = model.config.num_attention_heads
        b, n, d = h.shape
        split = lambda x: x.view(b, n, heads, d // heads).transpose(1, 2)
        return split(attention.query(h)), split(attention.key(h)), split(attention.value(h))


def _spread(model, factor=8.0):
    with torch.no_grad():
        for layer in model.base_model.encoder.layer:
            for proj in (layer.attention.self.query, layer.attention.self.key, layer.attention.self.value):
                proj.weight.mul_(factor)
    return model


def _softmax(row):
    top = max(row)
    e = [math.exp(v - top) for v in row]
    return [v / sum(e) for v in e]


def _kl(p, q):
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q) if pi > 0)


def _loop_terms(student, teacher, batch, s_layer, t_layer, double_softmax=False, mask_padding=False):
    qs, ks, vs = manual_qkv(student, batch, s_layer)
    qt, kt, vt = manual_qkv(teacher, batch, t_layer)
    mask = batch["attention_mask"]
    att = rel = 0.0
    rows = 0
    for b in range(qs.shape[0]):
        real = [j for j in range(qs.shape[2]) if mask[b, j]]
        rel_keys = real if mask_padding else list(range(qs.shape[2]))
        for h in range(qs.shape[1]):
            for i in range(qs.shape[2]):
                if mask_padding and not mask[b, i]:
                    continue
                a_t = _softmax([float(qt[b, h, i] @ kt[b, h, j]) / math.sqrt(qt.shape[-1]) for j in real])
                a_s = _softmax([float(qs[b, h, i] @ ks[b, h, j]) / math.sqrt(qs.shape[-1]) for j in real])
                if double_softmax:  # softmax over all keys of the probabilities (0 on padded keys)
                    full_t = [a_t[real.index(j)] if j in real else 0.0 for j in range(qs.shape[2])]
                    full_s = [a_s[real.index(j)] if j in real else 0.0 for j in range(qs.shape[2])]
                    att += _kl(_softmax(full_t), _softmax(full_s))
                else:
                    att += _kl(a_t, a_s)
                r_t = _softmax([float(vt[b, h, i] @ vt[b, h, j]) / math.sqrt(vt.shape[-1]) for j in rel_keys])
                r_s = _softmax([float(vs[b, h, i] @ vs[b, h, j]) / math.sqrt(vs.shape[-1]) for j in rel_keys])
                rel += _kl(r_t, r_s)
                rows += 1
    return att / rows, rel / rows


@pytest.mark.parametrize(
    "double_softmax, mask_padding", [(False, False), (False, True), (True, False), (True, True)]
)
def test_terms_match_loops(double_softmax, mask_padding):
    teacher, student = _spread(make_tiny_bert(seed=1)), _spread(make_tiny_bert(seed=2, layers=2, hidden=16))
    batch = make_batch(batch=3, length=6)
    method = MiniLM(teacher=teacher, student=student, gkd_double_softmax=double_softmax, mask_padding=mask_padding).eval()
    terms = method.compute_losses(batch)
    attention, relation = _loop_terms(student, teacher, batch, 1, 3, double_softmax, mask_padding)
    assert set(terms) == {"attention", "value_relation", "loss"}
    assert terms["attention"].item() == pytest.approx(attention, rel=1e-4)
    assert terms["value_relation"].item() == pytest.approx(relation, rel=1e-4)


@pytest.mark.parametrize("depths", [(12, 6), (12, 4), (6, 3), (12, 5), (12, 7)])
def test_last_layer_pairs(depths):
    from transformers import BertConfig

    from lightning_kd.methods.minilm import MiniLMIntermediate, MiniLMSettings

    t, s = (BertConfig(num_hidden_layers=n, hidden_size=24, num_attention_heads=4) for n in depths)
    part = MiniLMIntermediate(MiniLMSettings(), s, [t])
    assert (part.student_layer, part.teacher_layers) == (depths[1] - 1, [depths[0] - 1])


def test_zero_when_the_student_is_the_teacher():
    teacher = _spread(make_tiny_bert(seed=1))
    for double in (False, True):
        method = MiniLM(teacher=teacher, student=copy.deepcopy(teacher), gkd_double_softmax=double).eval()
        terms = method.compute_losses(make_batch())
        assert terms["attention"].item() == pytest.approx(0.0, abs=1e-7)
        assert terms["value_relation"].item() == pytest.approx(0.0, abs=1e-7)


def test_padding_invariance_with_mask_padding():
    teacher, student = _spread(make_tiny_bert(seed=1)), _spread(make_tiny_bert(seed=2, layers=2, hidden=16))
    method = MiniLM(teacher=teacher, student=student, mask_padding=True).eval()
    batch = make_batch()
    moved = {k: v.clone() for k, v in batch.items()}
    moved["input_ids"][~batch["attention_mask"].bool()] = 99
    before, after = method.compute_losses(batch), method.compute_losses(moved)
    for name in ("attention", "value_relation"):
        assert after[name].item() == pytest.approx(before[name].item(), rel=1e-5)


def test_gradients_reach_the_student_only():
    method = MiniLM(teacher=_spread(make_tiny_bert(seed=1)), student=make_tiny_bert(seed=2, layers=2, hidden=16))
    method.compute_losses(make_batch())["loss"].backward()
    assert all(p.grad is None for p in method.teachers.parameters())
    last = method.student.base_model.encoder.layer[-1].attention.self
    assert last.query.weight.grad.abs().sum() > 0 and last.value.weight.grad.abs().sum() > 0
    assert not list(method.intermediate.parameters())


@pytest.mark.parametrize("stage", ["classification", "mlm"])
def test_contract(stage, tmp_path):
    method = MiniLM(teacher=_spread(make_tiny_bert(stage, seed=1)), student=make_tiny_bert(stage, seed=2, layers=2, hidden=16))
    check_contract(method, make_batch(stage), tmp_path)


def test_head_mismatch_fails_at_construction():
    with pytest.raises(ValueError, match="as many heads"):
        MiniLM(teacher=make_tiny_bert(seed=1), student=make_tiny_bert(seed=2, layers=2, hidden=16, heads=2))


def test_two_teachers_of_different_depth_and_width():
    t1, t2 = make_tiny_bert(seed=1), make_tiny_bert(seed=3, layers=6, hidden=48)
    method = MiniLM(teachers=[t1, t2], student=make_tiny_bert(seed=2, layers=2, hidden=16))
    assert method.intermediate.teacher_layers == [3, 5]
    terms = method.compute_losses(make_batch())
    assert torch.isfinite(terms["loss"]) and terms["loss"] > 0

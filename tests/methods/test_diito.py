"""DIITO: the interchange (exact positions), sites, losses against written-out formulas, contract, errors."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

from lightning_kd.losses.interchange import (
    apply_interchange,
    interchange_counts,
    layer_draw,
    sample_interchange,
    source_values,
    teacher_block,
)
from lightning_kd.methods import DIITO
from lightning_kd.methods.diito import DIITO_PREDICTION
from tests.conftest import make_batch, make_tiny_bert
from tests.methods.contract import check_contract


def _mlm_pair(student_layers=2, hidden=32, teacher_layers=4):
    return make_tiny_bert("mlm", seed=1, layers=teacher_layers), make_tiny_bert("mlm", seed=2, layers=student_layers, hidden=hidden)


def test_counts_follow_shorter_example_and_cap():
    lengths = torch.tensor([10, 7, 12, 4])
    # min(len_b, len_{b+1}) = 7, 7, 4, 4 → floor(0.3·…) = 2, 2, 1, 1
    assert interchange_counts(lengths, 0.3).tolist() == [2, 2, 1, 1]
    assert interchange_counts(lengths, 0.9, max_tokens=3).tolist() == [3, 3, 3, 3]


@pytest.mark.parametrize("way", ["consecutive", "random"])
def test_sampled_positions(way):
    mask = make_batch("mlm", batch=5, length=20)["attention_mask"]
    lengths = mask.sum(1)
    torch.manual_seed(0)
    swap = sample_interchange(mask, 0.5, way)
    for b in range(5):
        rows = swap.rows == b
        count = int(rows.sum())
        assert count == int(min(lengths[b], lengths[(b + 1) % 5]) * 0.5)
        assert torch.all(swap.source_rows[rows] == (b + 1) % 5)
        cols, src = swap.columns[rows], swap.source_columns[rows]
        if way == "consecutive":
            assert torch.equal(cols, torch.arange(cols[0], cols[0] + count))
            assert torch.equal(src, torch.arange(src[0], src[0] + count))
            assert cols.max() < lengths[b] and src.max() < lengths[(b + 1) % 5]
        else:
            assert len(set(cols.tolist())) == count and len(set(src.tolist())) == count


def test_apply_interchange_swaps_exactly_the_chosen_positions():
    torch.manual_seed(0)
    hidden = torch.randn(3, 6, 4)
    mask = torch.ones(3, 6, dtype=torch.long)
    swap = sample_interchange(mask, 0.5, "random")
    out = apply_interchange(hidden, swap, source_values(hidden, swap))
    expected = hidden.clone()
    chosen = set()
    for k in range(len(swap.rows)):
        b, n = int(swap.rows[k]), int(swap.columns[k])
        expected[b, n] = hidden[(b + 1) % 3, int(swap.source_columns[k])]
        chosen.add((b, n))
    assert torch.equal(out, expected)
    for b in range(3):
        for n in range(6):
            if (b, n) not in chosen:
                assert torch.equal(out[b, n], hidden[b, n])
    assert len(chosen) == 3 * 3  # 3 tokens per example, all distinct


@pytest.mark.parametrize(
    "teacher_layers,student_layers,layer,expected",
    [(12, 6, 1, [1, 2]), (12, 6, 6, [11, 12]), (12, 4, 2, [4, 5, 6]), (6, 3, 3, [5, 6]), (12, 3, 1, [1, 2, 3, 4])],
)
def test_teacher_blocks(teacher_layers, student_layers, layer, expected):
    assert teacher_block(layer, teacher_layers, student_layers) == expected


def test_non_divisible_depth_is_refused_for_full_alignment():
    teacher, student = make_tiny_bert("mlm", seed=1, layers=5), make_tiny_bert("mlm", seed=2, layers=2)
    with pytest.raises(ValueError, match="alignment 'middle'/'late'"):
        DIITO(teacher=teacher, student=student)
    method = DIITO(teacher=teacher, student=student, alignment="middle")
    assert method.alignment_sites(0) == ([2], [3])
    assert DIITO(teacher=teacher, student=student, alignment="late").alignment_sites(0) == ([1, 2], [4, 5])


def test_layer_draw_is_per_step_and_in_range():
    draws = [layer_draw(step, 6) for step in range(50)]
    assert set(draws) <= set(range(1, 7)) and len(set(draws)) > 1
    assert draws == [layer_draw(step, 6) for step in range(50)]


def test_intervened_pass_swaps_the_site_activations():
    teacher, student = _mlm_pair()
    method = DIITO(teacher=teacher, student=student, alignment="late").eval()
    batch = make_batch("mlm")
    torch.manual_seed(3)
    swap = method.draw_interchange(batch)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        h0 = student(**inputs, output_hidden_states=True).hidden_states
        values = {2: source_values(h0[2], swap)}
        features = method.intervened(student, batch, [2], values, swap, method.student_request().merge(
            type(method.student_request())(hidden_states=True)))
        expected_last = apply_interchange(h0[2], swap, values[2])
        expected_logits = student.cls(expected_last)
    torch.testing.assert_close(features.logits, expected_logits)
    torch.testing.assert_close(features.hidden_states[1], h0[1])  # earlier layer untouched


def _kl_t2(zs, zt, keep, T):
    kl = (zt.div(T).softmax(-1) * (zt.div(T).log_softmax(-1) - zs.div(T).log_softmax(-1))).sum(-1)
    return T * T * kl[keep].mean()


def _cos(a, b, keep):
    return (1 - torch.nn.functional.cosine_similarity(a, b, dim=-1))[keep].mean()


def test_terms_match_formulas():
    teacher, student = _mlm_pair()
    method = DIITO(teacher=teacher, student=student, alignment="late",
                   prediction=replace(DIITO_PREDICTION, soft_weight=0.2, hard_weight=0.1, temperature=2.0), causal_soft_weight=0.3, cosine_weight=0.4, causal_cosine_weight=0.5).eval()
    batch = make_batch("mlm")
    torch.manual_seed(5)
    terms = method.compute_losses(batch)
    torch.manual_seed(5)
    swap = method.draw_interchange(batch)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    keep_mlm, keep_tok = batch["labels"].ne(-100), batch["attention_mask"].bool()

    def run(model, sites):
        out0 = model(**inputs, labels=batch["labels"], output_hidden_states=True)
        handles = []
        for site in sites:  # independent re-implementation of the swap with plain indexing
            src = out0.hidden_states[site]

            def hook(m, i, o, src=src):
                o = o.clone()
                for k in range(len(swap.rows)):
                    o[swap.rows[k], swap.columns[k]] = src[swap.source_rows[k], swap.source_columns[k]]
                return o
            handles.append(model.bert.encoder.layer[site - 1].register_forward_hook(hook))
        out1 = model(**inputs, output_hidden_states=True)
        for h in handles:
            h.remove()
        return out0, out1

    with torch.no_grad():
        s0, s1 = run(student, [1, 2])
        t0, t1 = run(teacher, [3, 4])
    expected = {
        "hard": 0.1 * s0.loss,
        "soft": 0.2 * _kl_t2(s0.logits, t0.logits, keep_mlm, 2.0),
        "cosine": 0.4 * _cos(s0.hidden_states[-1], t0.hidden_states[-1], keep_tok),
        "causal_soft": 0.3 * _kl_t2(s1.logits, t1.logits, keep_mlm, 2.0),
        "causal_cosine": 0.5 * _cos(s1.hidden_states[-1], t1.hidden_states[-1], keep_tok),
    }
    assert set(terms) == set(expected) | {"loss"}
    for name, value in expected.items():
        assert terms[name].item() == pytest.approx(value.item(), rel=1e-4), name


def test_gkd_reduction_counts_padding_rows_as_distance_one():
    teacher = make_tiny_bert("mlm", seed=1, layers=2)
    method = DIITO(teacher=teacher, student=copy.deepcopy(teacher), reduction="gkd",
                   prediction=replace(DIITO_PREDICTION, soft_weight=0, hard_weight=0, reduction="gkd"), causal_soft_weight=0, causal_cosine_weight=0).eval()
    batch = make_batch("mlm")
    pads = (batch["attention_mask"] == 0).sum().item()
    assert method.compute_losses(batch)["cosine"].item() == pytest.approx(0.25 * pads / batch["attention_mask"].numel(), abs=1e-6)


def test_zero_when_student_is_teacher_copy():
    teacher = make_tiny_bert("mlm", seed=1, layers=2)
    method = DIITO(teacher=teacher, student=copy.deepcopy(teacher), causal_cosine_weight=0.25).eval()
    terms = method.compute_losses(make_batch("mlm"))
    for name in ("soft", "cosine", "causal_soft", "causal_cosine"):
        assert abs(terms[name].item()) < 1e-5, name


def test_padding_invariance_of_masked_terms():
    teacher, student = _mlm_pair()
    method = DIITO(teacher=teacher, student=student, interchange_way="consecutive").eval()
    batch = make_batch("mlm")
    other = {k: v.clone() for k, v in batch.items()}
    other["input_ids"][batch["attention_mask"] == 0] = 7
    torch.manual_seed(1)
    a = method.compute_losses(batch)
    torch.manual_seed(1)
    b = method.compute_losses(other)
    for name in a:
        assert a[name].item() == pytest.approx(b[name].item(), rel=1e-4, abs=1e-6), name


def test_gradients_reach_student_only_and_source_keeps_graph():
    teacher, student = _mlm_pair()
    method = DIITO(teacher=teacher, student=student, prediction=replace(DIITO_PREDICTION, soft_weight=0, hard_weight=0), cosine_weight=0,
                   causal_soft_weight=1.0, alignment="late")
    method.compute_losses(make_batch("mlm"))["loss"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert student.bert.encoder.layer[0].output.dense.weight.grad.abs().sum() > 0


def test_contract_pretraining(tmp_path):
    teacher, student = _mlm_pair()
    check_contract(DIITO(teacher=teacher, student=student), make_batch("mlm"), tmp_path)


def test_two_teachers():
    t1, t2 = make_tiny_bert("mlm", seed=1, layers=4), make_tiny_bert("mlm", seed=3, layers=2)
    method = DIITO(teachers=[t1, t2], student=make_tiny_bert("mlm", seed=2, layers=2))
    assert torch.isfinite(method.compute_losses(make_batch("mlm"))["loss"])
    t3 = make_tiny_bert("mlm", seed=3, layers=2, hidden=16)
    method = DIITO(teachers=[t1, t3], student=make_tiny_bert("mlm", seed=2, layers=2), cosine_weight=0)
    assert torch.isfinite(method.compute_losses(make_batch("mlm"))["loss"])


def test_bad_inputs():
    teacher, student = _mlm_pair()
    with pytest.raises(ValueError, match="pre-training"):
        DIITO(teacher=make_tiny_bert(seed=1), student=make_tiny_bert(seed=2, layers=2))
    with pytest.raises(ValueError, match="widths must match"):
        DIITO(teacher=teacher, student=make_tiny_bert("mlm", seed=2, layers=2, hidden=16))
    with pytest.raises(ValueError, match="forward_repeats to 1"):
        DIITO(teacher=teacher, student=student, forward_repeats=2)
    with pytest.raises(ValueError, match="interchange_prop"):
        DIITO(teacher=teacher, student=student, interchange_prop=0)
    with pytest.raises(ValueError, match="interchange_max_token"):
        DIITO(teacher=teacher, student=student, interchange_max_token=0)
    with pytest.raises(ValueError, match="'masked' mode"):
        DIITO(teacher=teacher, student=student, interchange_way="masked")
    with pytest.raises(ValueError, match=">= 0"):
        DIITO(teacher=teacher, student=student, prediction=replace(DIITO_PREDICTION, soft_weight=-1))
    checkpointed = make_tiny_bert("mlm", seed=2, layers=2)
    checkpointed.gradient_checkpointing_enable()
    with pytest.raises(ValueError, match="gradient_checkpointing_disable"):
        DIITO(teacher=teacher, student=checkpointed)
    with pytest.raises(ValueError, match="activation_checkpointing: false"):
        DIITO(teacher=teacher, student=make_tiny_bert("mlm", seed=2, layers=2), activation_checkpointing=True)
    method = DIITO(teacher=teacher, student=student)
    student.gradient_checkpointing_enable()
    with pytest.raises(ValueError, match="checkpointing"):
        method.on_fit_start()

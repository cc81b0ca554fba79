"""MGSKD: contract in both stages, terms against the written-out formulas, layer pairs, edge cases, errors."""

from __future__ import annotations

import copy

import pytest
import torch
from pytorch_lightning import seed_everything

from lightning_kd.losses.prediction import PredictionLoss
from lightning_kd.methods import MGSKD
from tests.conftest import make_batch, make_tiny_bert
from tests.losses.test_relation import ref_pair_and_triplet, ref_sample, ref_span_lengths, ref_span_pool
from tests.methods.contract import check_contract

TINY = {"relation_heads": 4, "sample_level_from": 2}  # tiny widths 16/32; a 2-layer student has pairs 0..2


def tiny_pair(stage="classification"):
    return make_tiny_bert(stage, seed=1), make_tiny_bert(stage, seed=2, layers=2, hidden=16)


def hidden(model, batch):
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        return model(**inputs, output_hidden_states=True).hidden_states


def finite_step(method, batch):
    terms = method.compute_losses(batch)
    assert all(torch.isfinite(v) for v in terms.values()), terms
    terms["loss"].backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for _, p in method.trainable_named_parameters())
    assert all(p.grad is None for p in method.teachers.parameters())
    return terms


@pytest.mark.parametrize("stage", ["classification", "mlm"])
def test_mgskd_contract(stage, tmp_path):
    teacher, student = tiny_pair(stage)
    result = check_contract(MGSKD(teacher=teacher, student=student, **TINY), make_batch(stage), tmp_path)
    assert set(result["first"]) == {"sample", "token", "span", "loss"}  # the seed's step 2: no prediction term


def test_mgskd_prediction_only_contract(tmp_path):
    teacher, student = tiny_pair("mlm")
    method = MGSKD(teacher=teacher, student=student, terms=["prediction"])
    assert not method.student_request().hidden_states and not method.teacher_request(0).hidden_states
    result = check_contract(method, make_batch("mlm"), tmp_path)
    assert set(result["first"]) == {"soft", "loss"}


def test_mgskd_step_three_is_kl_at_temperature_one():
    teacher, student = tiny_pair("mlm")
    batch = make_batch("mlm")
    terms = MGSKD(teacher=teacher, student=student, terms=["prediction"]).eval().compute_losses(batch)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        zs, zt = student(**inputs).logits.double(), teacher(**inputs).logits.double()
    kl = (zt.softmax(-1) * (zt.log_softmax(-1) - zs.log_softmax(-1))).sum(-1)
    assert terms["soft"].item() == pytest.approx(kl[batch["labels"].ne(-100)].mean().item(), rel=1e-5)


@pytest.mark.parametrize("span_pooling", ["valid_tokens", "all_tokens"])
def test_mgskd_terms_match_written_out_formulas(span_pooling):
    teacher, student = tiny_pair()
    batch = make_batch(batch=3, length=10)
    method = MGSKD(
        teacher=teacher,
        student=student,
        relation_heads=4,
        sample_level_from=2,
        triplet_anchors=3,
        triplet_neighbours=3,
        span_rate=0.4,
        span_pooling=span_pooling,
        sample_weight=4.0,
        token_weight=1.5,
        span_weight=0.5,
    ).eval()
    torch.manual_seed(7)
    terms = method.compute_losses(batch)
    torch.manual_seed(7)
    lengths = ref_span_lengths(10, 0.4, torch.randn(4, dtype=torch.float64).abs().tolist())
    hs, ht = hidden(student, batch), hidden(teacher, batch)
    mask = batch["attention_mask"].bool()
    pairs = [(0, 0), (1, 2), (2, 4)]  # uniform 4 → 2; pairs 0 and 1 token/span level, pair 2 sample level
    token = sum(sum(ref_pair_and_triplet(hs[s], ht[t], mask, 4, 3, 3)) for s, t in pairs[:2])
    span = 0.0
    for s, t in pairs[:2]:
        s_span, span_mask = ref_span_pool(hs[s], mask, lengths, span_pooling == "all_tokens")
        t_span, _ = ref_span_pool(ht[t], mask, lengths, span_pooling == "all_tokens")
        span += sum(ref_pair_and_triplet(s_span, t_span, span_mask, 4, 3, 3))
    sample = ref_sample(hs[2], ht[4], mask, 4)
    assert terms["token"].item() == pytest.approx(1.5 * token, rel=1e-4)
    assert terms["span"].item() == pytest.approx(0.5 * span, rel=1e-4)
    assert terms["sample"].item() == pytest.approx(4.0 * sample, rel=1e-4)


@pytest.mark.parametrize(
    "teacher_depth,student_depth,expected",
    [
        (12, 6, [0, 2, 4, 6, 8, 10, 12]),
        (12, 4, [0, 3, 6, 9, 12]),
        (6, 3, [0, 2, 4, 6]),
        (12, 5, [0, 3, 6, 9, 11, 12]),  # uniform boundaries; the reference's i·⌊12/5⌋ would end at 10
    ],
)
def test_mgskd_layer_pairs(teacher_depth, student_depth, expected):
    teacher = make_tiny_bert(seed=1, layers=teacher_depth, hidden=16)
    student = make_tiny_bert(seed=2, layers=student_depth, hidden=16)
    method = MGSKD(teacher=teacher, student=student, relation_heads=4)
    assert method.teacher_layers == [expected]


def test_mgskd_zero_for_a_copy_of_the_teacher():
    teacher = make_tiny_bert(seed=1)
    method = MGSKD(teacher=teacher, student=copy.deepcopy(teacher), **TINY).eval()
    terms = method.compute_losses(make_batch())
    for name in ("sample", "token", "span"):
        assert terms[name].item() == pytest.approx(0.0, abs=1e-7), name


def test_mgskd_padding_invariance():
    teacher, student = tiny_pair()
    method = MGSKD(teacher=teacher, student=student, **TINY).eval()
    batch = make_batch()
    changed = {k: v.clone() for k, v in batch.items()}
    pads = ~batch["attention_mask"].bool()
    changed["input_ids"][pads] = torch.randint(5, 200, (int(pads.sum()),))
    torch.manual_seed(0)
    before = method.compute_losses(batch)
    torch.manual_seed(0)
    after = method.compute_losses(changed)
    for name in ("sample", "token", "span"):
        torch.testing.assert_close(after[name], before[name], rtol=1e-5, atol=1e-6)


def test_mgskd_spans_are_reproducible_under_a_seed():
    teacher, student = tiny_pair()
    method = MGSKD(teacher=teacher, student=student, **TINY).eval()
    batch = make_batch(length=16)
    spans = []
    for seed in (1, 1, 2, 3):
        seed_everything(seed, verbose=False)
        spans.append(method.compute_losses(batch)["span"].item())
    assert spans[0] == spans[1]
    assert len({spans[1], spans[2], spans[3]}) > 1


def test_mgskd_edge_case_sequences_shorter_than_k1_k2():
    teacher, student = tiny_pair()
    method = MGSKD(teacher=teacher, student=student, **TINY, triplet_anchors=20, triplet_neighbours=20)
    terms = finite_step(method, make_batch(batch=3, length=5))
    assert terms["token"] > 0


def test_mgskd_edge_case_batch_of_one():
    teacher, student = tiny_pair()
    terms = finite_step(MGSKD(teacher=teacher, student=student, **TINY), make_batch(batch=1))
    assert terms["sample"].item() == 0.0  # no triplet of distinct sequences


def test_mgskd_edge_case_no_spans():
    teacher, student = tiny_pair()
    batch = make_batch(batch=2, length=2)  # ⌊2 · 0.4⌋ = 0 spans
    terms = finite_step(MGSKD(teacher=teacher, student=student, **TINY), batch)
    assert terms["span"].item() == 0.0


def test_mgskd_edge_case_all_padding_rows():
    teacher, student = tiny_pair()
    batch = make_batch(batch=4, length=10)
    batch["attention_mask"][2:] = 0
    batch["attention_mask"][1, 1:] = 0  # and a row of [CLS] alone
    finite_step(MGSKD(teacher=teacher, student=student, **TINY), batch)
    every_row = make_batch(batch=2, length=6)
    every_row["attention_mask"][:] = 0
    terms = finite_step(MGSKD(teacher=teacher, student=student, **TINY), every_row)
    assert all(terms[name].item() == 0.0 for name in ("sample", "token", "span"))


def test_mgskd_two_teachers_of_different_depth_and_width():
    t1, student = tiny_pair()
    t2 = make_tiny_bert(seed=3, layers=3, hidden=24)
    method = MGSKD(teachers=[t1, t2], student=student, **TINY)
    assert method.teacher_layers == [[0, 2, 4], [0, 2, 3]]
    terms = finite_step(method, make_batch())
    assert {"sample", "token", "span"} <= set(terms)


def test_mgskd_bad_input_fails_fast(tiny_teacher, tiny_student):
    def build(**knobs):
        return MGSKD(teacher=tiny_teacher, student=tiny_student, **{**TINY, **knobs})

    with pytest.raises(ValueError, match="not divisible by relation_heads=64"):
        MGSKD(teacher=tiny_teacher, student=tiny_student, sample_level_from=2)
    with pytest.raises(ValueError, match="no layer pair for the sample loss"):
        build(sample_level_from=3)
    with pytest.raises(ValueError, match="no layer pair for the token/span losses"):
        build(sample_level_from=0)
    with pytest.raises(ValueError, match="sample_level_from must be in 0..3"):
        build(terms=["sample"], sample_level_from=5)
    with pytest.raises(ValueError, match="'prediction' is not in terms"):
        build(prediction=PredictionLoss())
    with pytest.raises(ValueError, match="span_rate set, but no term"):
        build(terms=["sample", "token"], span_rate=0.2)
    with pytest.raises(ValueError, match=r"relation_heads set, but no term in terms=\['prediction'\]"):
        MGSKD(teacher=tiny_teacher, student=tiny_student, terms=["prediction"], relation_heads=4)
    with pytest.raises(ValueError, match="non-empty list of distinct"):
        build(terms=[])
    with pytest.raises(ValueError, match="non-empty list of distinct"):
        build(terms=["token", "token"])
    with pytest.raises(ValueError, match=r"span_rate must be in \(0, 1\]"):
        build(span_rate=0.0)
    with pytest.raises(ValueError, match="token_weight must be > 0"):
        build(token_weight=0.0)
    with pytest.raises(ValueError, match="triplet_anchors and triplet_neighbours must be >= 1"):
        build(triplet_neighbours=0)

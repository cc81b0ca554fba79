"""MixBaseline: the three GKD recipes against the parts and written-out formulas, the single hard term,
reuse of each method's own loss module, properties, contract, errors and two teachers."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from lightning_kd.losses.prediction import PredictionLoss
from lightning_kd.methods import DistilBERT, MiniLM, MiniLMv2, MixBaseline, TinyBERT
from lightning_kd.methods.distilbert import DistilBERTIntermediate, DistilBERTSettings
from lightning_kd.methods.minilm import MiniLMIntermediate, MiniLMSettings
from lightning_kd.methods.minilmv2 import MiniLMv2Intermediate, MiniLMv2Settings
from lightning_kd.methods.tinybert import TinyBERTIntermediate, TinyBERTSettings
from tests.conftest import make_batch, make_tiny_bert
from tests.methods.contract import check_contract

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
ALL = ["TinyBERT", "MiniLMv2", "MiniLM", "DistilBERT"]
SEED_DISTILBERT = DistilBERTSettings(alpha_cos=1.0, cos_positions="all_tokens")
SEED_DISTILBERT_PREDICTION = PredictionLoss(soft_weight=5.0, hard_weight=2.0, temperature=2.0, soft_positions="masked_tokens")


def _spread(model, factor=6.0):
    with torch.no_grad():
        for layer in model.base_model.encoder.layer:
            for proj in (layer.attention.self.query, layer.attention.self.key, layer.attention.self.value):
                proj.weight.mul_(factor)
    return model


def _pair(stage="mlm", hidden=16):
    return _spread(make_tiny_bert(stage, seed=1)), _spread(make_tiny_bert(stage, seed=2, layers=2, hidden=hidden))


def test_step1_pretraining_is_the_sum_of_the_methods_own_terms():
    teacher, student = _pair("mlm", hidden=32)  # equal widths so standalone DistilBERT can be compared
    batch = make_batch("mlm")
    mix = MixBaseline(
        teacher=teacher, student=student, methods=ALL, minilmv2=MiniLMv2Settings(relation_heads=4),
        distilbert=SEED_DISTILBERT, distilbert_prediction=SEED_DISTILBERT_PREDICTION, prediction_from=["DistilBERT"],
    ).eval()
    assert {type(p) for p in mix.parts.values()} == {TinyBERTIntermediate, MiniLMv2Intermediate, MiniLMIntermediate, DistilBERTIntermediate}
    terms = mix.compute_losses(batch)

    tiny = TinyBERT(teacher=teacher, student=student).eval()
    tiny.intermediate.load_state_dict(mix.parts["TinyBERT"].state_dict())
    expected = {f"tinybert_{k}": v for k, v in tiny.compute_losses(batch).items() if k != "loss"}
    expected.update({f"minilmv2_{k}": v for k, v in MiniLMv2(teacher=teacher, student=student, relation_heads=4).eval().compute_losses(batch).items() if k != "loss"})
    expected.update({f"minilm_{k}": v for k, v in MiniLM(teacher=teacher, student=student).eval().compute_losses(batch).items() if k != "loss"})
    distil = DistilBERT(teacher=teacher, student=student, prediction=SEED_DISTILBERT_PREDICTION, alpha_cos=1.0).eval().compute_losses(batch)
    expected["distilbert_soft"], expected["hard"] = distil["soft"], distil["hard"]
    # Inside MixBaseline the cosine goes through TinyBERT's fit layer (the reference's coupling).
    with torch.no_grad():
        out_s = student(**{k: batch[k] for k in INPUTS}, output_hidden_states=True).hidden_states[-1]
        out_t = teacher(**{k: batch[k] for k in INPUTS}, output_hidden_states=True).hidden_states[-1]
        projected = mix.parts["TinyBERT"].fit[0](out_s)
        rows = [1 - torch.nn.functional.cosine_similarity(projected[b, n], out_t[b, n], dim=0).item()
                for b, n in batch["attention_mask"].nonzero().tolist()]
    expected["distilbert_cos"] = torch.tensor(sum(rows) / len(rows))
    assert set(terms) == set(expected) | {"loss"}
    for name, value in expected.items():
        assert terms[name].item() == pytest.approx(value.item(), rel=1e-4, abs=1e-8), name
    assert terms["loss"].item() == pytest.approx(sum(v.item() for v in expected.values()), rel=1e-5)


def test_step2_finetuning_with_method_weights():
    teacher, student = _pair("classification")
    with torch.no_grad():
        teacher.classifier.weight.mul_(300.0)
    batch = make_batch()
    no_cos = DistilBERTSettings(alpha_cos=0.0)
    mix = MixBaseline(
        teacher=teacher, student=student, methods=ALL, method_weights={"MiniLM": 3.0},
        minilmv2=MiniLMv2Settings(relation_heads=4), distilbert=no_cos, prediction_from=["DistilBERT"],
        distilbert_prediction=PredictionLoss(soft_weight=5.0, hard_weight=2.0, temperature=2.0, soft_positions="all_tokens"),
    ).eval()
    terms = mix.compute_losses(batch)
    assert "distilbert_cos" not in terms
    minilm = MiniLM(teacher=teacher, student=student).eval().compute_losses(batch)
    assert terms["minilm_attention"].item() == pytest.approx(3.0 * minilm["attention"].item(), rel=1e-5)
    with torch.no_grad():
        zs = student(**{k: batch[k] for k in INPUTS}).logits.double()
        zt = teacher(**{k: batch[k] for k in INPUTS}).logits.double()
    kl = sum(
        sum(p * (math.log(p) - math.log(q)) for p, q in zip(torch.softmax(zt[b] / 2, -1).tolist(), torch.softmax(zs[b] / 2, -1).tolist()))
        for b in range(zs.shape[0])
    ) / zs.shape[0]
    assert terms["distilbert_soft"].item() == pytest.approx(5.0 * 4.0 * kl, rel=1e-4)
    assert terms["hard"].item() == pytest.approx(2.0 * torch.nn.functional.cross_entropy(zs, batch["labels"]).item(), rel=1e-5)


@pytest.mark.parametrize("soft_loss, t2", [("ce", False), ("kl", True)])
def test_step3_kd_plus_tinybert_prediction(soft_loss, t2):
    teacher, student = make_tiny_bert(seed=1), make_tiny_bert(seed=2, layers=2, hidden=16)
    with torch.no_grad():
        teacher.classifier.weight.mul_(300.0)
    batch = make_batch()
    prediction = PredictionLoss(soft_weight=1.0, hard_weight=1.0, temperature=10.0, soft_loss=soft_loss, t2_scale=t2)
    mix = MixBaseline(teacher=teacher, student=student, methods=[], prediction=prediction,
                      prediction_from=["TinyBERT"], tinybert_temperature=1.0).eval()
    assert len(mix.parts) == 0
    terms = mix.compute_losses(batch)
    with torch.no_grad():
        zs = student(**{k: batch[k] for k in INPUTS}).logits.double()
        zt = teacher(**{k: batch[k] for k in INPUTS}).logits.double()

    def soft(T):
        total = 0.0
        for b in range(zs.shape[0]):
            p, q = torch.softmax(zt[b] / T, -1).tolist(), torch.softmax(zs[b] / T, -1).tolist()
            total += sum(pi * ((math.log(pi) if soft_loss == "kl" else 0.0) - math.log(qi)) for pi, qi in zip(p, q))
        return total / zs.shape[0] * (T * T if t2 else 1.0)

    assert set(terms) == {"soft", "tinybert_soft", "hard", "loss"}
    assert terms["soft"].item() == pytest.approx(soft(10.0), rel=1e-4)
    assert terms["tinybert_soft"].item() == pytest.approx(soft(1.0), rel=1e-4)
    assert terms["hard"].item() == pytest.approx(torch.nn.functional.cross_entropy(zs, batch["labels"]).item(), rel=1e-5)


# ---------------------------------------------------------------- properties
def test_zero_intermediate_terms_when_the_student_is_the_teacher():
    teacher = _spread(make_tiny_bert("mlm", seed=1))
    mix = MixBaseline(teacher=teacher, student=copy.deepcopy(teacher), methods=ALL,
                      minilmv2=MiniLMv2Settings(relation_heads=4)).eval()
    with torch.no_grad():
        mix.parts["TinyBERT"].fit[0].weight.copy_(torch.eye(32))
        mix.parts["TinyBERT"].fit[0].bias.zero_()
    terms = mix.compute_losses(make_batch("mlm"))
    for name, value in terms.items():
        assert value.item() == pytest.approx(0.0, abs=1e-6), name


def test_padding_invariance_with_masked_parts():
    teacher, student = _pair("mlm")
    mix = MixBaseline(teacher=teacher, student=student, methods=ALL, minilm=MiniLMSettings(mask_padding=True),
                      minilmv2=MiniLMv2Settings(relation_heads=4, mask_padding=True), prediction_from=["DistilBERT"]).eval()
    batch = make_batch("mlm")
    moved = {k: v.clone() for k, v in batch.items()}
    moved["input_ids"][~batch["attention_mask"].bool()] = 99
    before, after = mix.compute_losses(batch), mix.compute_losses(moved)
    for name in before:
        assert after[name].item() == pytest.approx(before[name].item(), rel=1e-5), name


def test_gradients_reach_student_and_fit_layer_only():
    teacher, student = _pair("mlm")
    mix = MixBaseline(teacher=teacher, student=student, methods=["TinyBERT", "DistilBERT"], prediction_from=["DistilBERT"])
    mix.compute_losses(make_batch("mlm"))["loss"].backward()
    assert all(p.grad is None for p in mix.teachers.parameters())
    assert mix.parts["TinyBERT"].fit[0].weight.grad.abs().sum() > 0
    names = [n for n, _ in mix.trainable_named_parameters()]
    assert sum(n.startswith("parts.TinyBERT.fit") for n in names) == 2  # weight and bias, registered once


@pytest.mark.parametrize("stage", ["classification", "mlm"])
def test_contract(stage, tmp_path):
    teacher, student = _pair(stage)
    cos = 1.0 if stage == "mlm" else 0.0
    mix = MixBaseline(
        teacher=teacher, student=student, methods=ALL, minilmv2=MiniLMv2Settings(relation_heads=4),
        distilbert=DistilBERTSettings(alpha_cos=cos), prediction_from=["DistilBERT"],
    )
    check_contract(mix, make_batch(stage), tmp_path)


# ---------------------------------------------------------------- errors and multi-teacher
def test_bad_inputs_fail_at_construction():
    teacher, student = make_tiny_bert(seed=1), make_tiny_bert(seed=2, layers=2, hidden=16)
    pred = PredictionLoss(soft_weight=1.0, hard_weight=1.0)
    cases = [
        ({"methods": ["TinyBERT", "TinyBERT"]}, "twice"),
        ({"methods": ["PKD"]}, "Unknown methods"),
        ({"methods": ["MiniLM"], "tinybert": TinyBERTSettings()}, "TinyBERT is not in `methods`"),
        ({"methods": ["TinyBERT"], "distilbert": DistilBERTSettings()}, "neither"),
        ({"methods": ["TinyBERT"], "method_weights": {"MiniLM": 2.0}}, "not in `methods`"),
        ({"methods": ["TinyBERT"], "method_weights": {"TinyBERT": 0.0}}, "must be > 0"),
        ({"methods": ["TinyBERT"], "tinybert_temperature": 2.0}, "add TinyBERT to `prediction_from`"),
        ({"prediction_from": ["TinyBERT"]}, "needs `prediction`"),
        ({"prediction": pred, "prediction_from": ["DistilBERT"]}, "counted twice"),
        ({}, "nothing to train"),
        ({"methods": ["MiniLMv2"]}, "relation_heads=48"),
        ({"methods": ["DistilBERT"], "distilbert": DistilBERTSettings(alpha_cos=1.0)}, "teacher 0 is 32 wide"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            MixBaseline(teacher=teacher, student=student, **kwargs)
    # Valid: DistilBERT's prediction loss only, the plain loss providing no second hard term.
    MixBaseline(teacher=teacher, student=student, prediction=PredictionLoss(hard_weight=0.0), prediction_from=["DistilBERT"])


def test_two_teachers_of_different_depth_and_width():
    t1, t2 = _spread(make_tiny_bert("mlm", seed=1)), _spread(make_tiny_bert("mlm", seed=3, layers=6, hidden=48))
    mix = MixBaseline(teachers=[t1, t2], student=make_tiny_bert("mlm", seed=2, layers=2, hidden=16), methods=ALL,
                      minilmv2=MiniLMv2Settings(relation_heads=[4, 8]), prediction_from=["DistilBERT"])
    terms = mix.compute_losses(make_batch("mlm"))
    assert torch.isfinite(terms["loss"]) and "distilbert_cos" in terms

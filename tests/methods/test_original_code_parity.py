"""Parity options that reproduce the original authors' code, against those formulas written out:
TinyBERT's prediction-stage soft cross-entropy ``(−p_T·log p_S).mean()``, ``PredictionLoss.class_mean``
in general, and MiniLMv2 with padded keys masked but padded query rows kept (PaddleNLP).
PKD's authors' scale is tested in ``tests/methods/test_pkd.py::test_authors_code_scale_is_the_default``."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_kd.losses.attention import relation_kl, split_relation_heads
from lightning_kd.losses.prediction import PredictionLoss
from lightning_kd.methods import MiniLMv2, TinyBERT
from tests.conftest import make_batch, make_tiny_bert
from tests.methods.test_minilmv2 import _kl, _softmax, _spread, manual_projections

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _spread_heads(*models):
    """Larger classifier weights, so the soft terms are far from their value at uniform outputs."""
    with torch.no_grad():
        for model in models:
            model.classifier.weight.mul_(60.0)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_tinybert_prediction_stage_matches_the_official_soft_cross_entropy(temperature):
    """Official TinyBERT: ``soft_cross_entropy(z_S/T, z_T/T) = (−softmax(z_T/T)·log_softmax(z_S/T)).mean()``,
    a mean over the batch *and* the classes, no T²."""
    teacher, student = make_tiny_bert(seed=1, num_labels=3), make_tiny_bert(seed=2, layers=2, num_labels=3)
    _spread_heads(teacher, student)
    batch = make_batch()
    official = PredictionLoss(soft_weight=1.0, hard_weight=0.0, temperature=temperature, soft_loss="ce", t2_scale=False, class_mean=True)
    method = TinyBERT(teacher=teacher, student=student, terms=[], prediction=official).eval()
    got = method.compute_losses(batch)["soft"].item()
    with torch.no_grad():
        inputs = {k: batch[k] for k in INPUTS}
        zs, zt = student(**inputs).logits.double() / temperature, teacher(**inputs).logits.double() / temperature
    expected = (-torch.softmax(zt, dim=-1) * torch.log_softmax(zs, dim=-1)).mean()
    assert got == pytest.approx(expected.item(), rel=1e-5)
    # without the knob: the library's per-example sum over classes, C = 3 times the official value
    ours = TinyBERT(
        teacher=teacher, student=student, terms=[], prediction=PredictionLoss(hard_weight=0.0, temperature=temperature, soft_loss="ce", t2_scale=False)
    ).eval()
    assert ours.compute_losses(batch)["soft"].item() == pytest.approx(3 * expected.item(), rel=1e-5)


@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides the total loss")
def test_class_mean_divides_kl_and_ce_by_the_class_count_and_refuses_mse():
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    batch = {"labels": torch.zeros(5, dtype=torch.long)}
    for soft_loss in ("kl", "ce"):
        plain = PredictionLoss(temperature=2.0, soft_loss=soft_loss).soft(zs, zt, batch)
        mean = PredictionLoss(temperature=2.0, soft_loss=soft_loss, class_mean=True).soft(zs, zt, batch)
        torch.testing.assert_close(mean, plain / 7)
    # PyTorch's KLDivLoss(reduction="mean") is the element mean over (batch, classes): PKD's soft term
    kl_mean = torch.nn.KLDivLoss(reduction="mean")(torch.log_softmax(zs / 2, dim=1), torch.softmax(zt / 2, dim=1)) * 4
    torch.testing.assert_close(PredictionLoss(temperature=2.0, class_mean=True).soft(zs, zt, batch), kl_mean)
    with pytest.raises(ValueError, match="class_mean"):
        PredictionLoss(soft_loss="mse", class_mean=True)


def _paddle_relation(xs, xt, heads, mask):
    """PaddleNLP's ``calc_minilm_loss`` as a loop: relation logits + the additive key mask, softmax over
    keys, KL per row, averaged over every (b, a, i) row, padded query rows included."""
    ds, dt = xs.shape[-1] // heads, xt.shape[-1] // heads
    total, rows = 0.0, 0
    for b in range(xs.shape[0]):
        keys = [j for j in range(xs.shape[1]) if mask[b, j]]
        for a in range(heads):
            s, t = xs[b, :, a * ds : (a + 1) * ds], xt[b, :, a * dt : (a + 1) * dt]
            for i in range(xs.shape[1]):  # every query row, real or padded
                rel_t = _softmax([float(t[i] @ t[j]) / math.sqrt(dt) for j in keys])
                rel_s = _softmax([float(s[i] @ s[j]) / math.sqrt(ds) for j in keys])
                total += _kl(rel_t, rel_s)
                rows += 1
    return total / rows


def test_relation_kl_keeping_padded_queries_matches_paddlenlp():
    g = torch.Generator().manual_seed(3)
    xs, xt = torch.randn(3, 6, 8, generator=g), torch.randn(3, 6, 12, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]])
    got = relation_kl(split_relation_heads(xs, 2), split_relation_heads(xt, 2), mask, mask_padding=True, mask_queries=False)
    assert got.item() == pytest.approx(_paddle_relation(xs, xt, 2, mask), rel=1e-5)
    dropped = relation_kl(split_relation_heads(xs, 2), split_relation_heads(xt, 2), mask, mask_padding=True)
    assert dropped.item() != pytest.approx(got.item(), rel=1e-3)
    with pytest.raises(ValueError, match="mask_padding"):
        relation_kl(split_relation_heads(xs, 2), split_relation_heads(xt, 2), mask, mask_queries=False)


def test_minilmv2_padded_queries_keep_matches_paddlenlp_on_real_models():
    teacher, student = _spread(make_tiny_bert(seed=1)), _spread(make_tiny_bert(seed=2, layers=2))
    batch = make_batch()
    method = MiniLMv2(teacher=teacher, student=student, relation_heads=4, mask_padding=True, padded_queries="keep").eval()
    terms = method.compute_losses(batch)
    s_qkv, t_qkv = manual_projections(student, batch, 1), manual_projections(teacher, batch, 3)
    mask = batch["attention_mask"]
    for name, xs, xt in zip(("query_relation", "key_relation", "value_relation"), s_qkv, t_qkv):
        assert terms[name].item() == pytest.approx(_paddle_relation(xs, xt, 4, mask), rel=1e-4)


def test_padded_queries_needs_mask_padding():
    with pytest.raises(ValueError, match="mask_padding=True"):
        MiniLMv2(teacher=make_tiny_bert(seed=1), student=make_tiny_bert(seed=2, layers=2), relation_heads=4, padded_queries="keep")
    with pytest.raises(ValueError, match="'drop' or 'keep'"):
        MiniLMv2(
            teacher=make_tiny_bert(seed=1), student=make_tiny_bert(seed=2, layers=2), relation_heads=4,
            mask_padding=True, padded_queries="all",
        )

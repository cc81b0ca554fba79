"""Attention-level losses against hand-computed values and plain loops, plus their properties."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_kd.losses.attention import (
    attention_kl,
    attention_probs_double_softmax_kl,
    attention_score_mse,
    relation_kl,
    self_relation_logits,
    split_relation_heads,
)

# Batch of 2, sequence of 3; the second example's last token is padding.
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])


def _scores(seed: int, heads: int = 2) -> torch.Tensor:
    return torch.randn(2, heads, 3, 3, generator=torch.Generator().manual_seed(seed)) * 2


def _softmax(row: list[float]) -> list[float]:
    top = max(row)
    e = [math.exp(v - top) for v in row]
    return [v / sum(e) for v in e]


def _kl(p: list[float], q: list[float]) -> float:
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q) if pi > 0)


# ---------------------------------------------------------------- score MSE (TinyBERT)
def test_score_mse_hand_computed():
    student = torch.zeros(1, 1, 2, 2)
    teacher = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    assert attention_score_mse(student, teacher).item() == pytest.approx((1 + 4 + 9 + 16) / 4)
    # Key 1 is padding: its column is zeroed in both; masked mean keeps query 0 x key 0 only.
    mask = torch.tensor([[1, 0]])
    assert attention_score_mse(student, teacher, mask).item() == pytest.approx(1.0)
    # gkd: zeroed column, but every entry (padded query row included) stays in the mean: (1 + 9) / 4.
    assert attention_score_mse(student, teacher, mask, reduction="gkd").item() == pytest.approx(10 / 4)


def test_score_mse_matches_loops():
    s, t = _scores(0), _scores(1)
    kept = gkd_total = 0.0
    count = 0
    for b in range(2):
        for h in range(2):
            for i in range(3):
                for j in range(3):
                    sv = float(s[b, h, i, j]) if MASK[b, j] else 0.0
                    tv = float(t[b, h, i, j]) if MASK[b, j] else 0.0
                    gkd_total += (sv - tv) ** 2
                    if MASK[b, i] and MASK[b, j]:
                        kept += (sv - tv) ** 2
                        count += 1
    assert attention_score_mse(s, t, MASK).item() == pytest.approx(kept / count, rel=1e-5)
    assert attention_score_mse(s, t, MASK, reduction="gkd").item() == pytest.approx(gkd_total / s.numel(), rel=1e-5)


def test_score_mse_ignores_the_mask_constant_of_each_model():
    # A model that wrote -10000 into padded entries and one that wrote the fp32 minimum agree.
    s, t = _scores(0), _scores(0)
    keys = ~MASK.bool()[:, None, None, :]
    s = s.masked_fill(keys, -10000.0)
    t = t.masked_fill(keys, torch.finfo(torch.float32).min)
    assert attention_score_mse(s, t, MASK).item() == 0.0
    assert attention_score_mse(s, t, MASK, reduction="gkd").item() == 0.0


def test_score_mse_rejects_head_mismatch_and_bad_reduction():
    with pytest.raises(ValueError, match="head counts"):
        attention_score_mse(_scores(0, heads=2), _scores(0, heads=3))
    with pytest.raises(ValueError, match="reduction"):
        attention_score_mse(_scores(0), _scores(1), MASK, reduction="sum")


# ---------------------------------------------------------------- attention KL (MiniLM)
def _loop_attention_kl(s, t, mask, mask_queries):
    total, rows = 0.0, 0
    for b in range(s.shape[0]):
        keys = [j for j in range(s.shape[-1]) if mask is None or mask[b, j]]
        for h in range(s.shape[1]):
            for i in range(s.shape[2]):
                if mask_queries and not mask[b, i]:
                    continue
                p = _softmax([float(t[b, h, i, j]) for j in keys])
                q = _softmax([float(s[b, h, i, j]) for j in keys])
                total += _kl(p, q)
                rows += 1
    return total / rows


@pytest.mark.parametrize("mask_queries", [False, True])
def test_attention_kl_matches_loops(mask_queries):
    s, t = _scores(2), _scores(3)
    expected = _loop_attention_kl(s, t, MASK, mask_queries)
    assert attention_kl(s, t, MASK, mask_queries=mask_queries).item() == pytest.approx(expected, rel=1e-5)
    assert attention_kl(s, t).item() == pytest.approx(_loop_attention_kl(s, t, None, False), rel=1e-5)


def test_attention_kl_hand_computed():
    # One row: teacher scores (0, log 3) → p = (1/4, 3/4); student (0, 0) → q = (1/2, 1/2).
    teacher = torch.tensor([[[[0.0, math.log(3.0)]]]])
    student = torch.zeros(1, 1, 1, 2)
    expected = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert attention_kl(student, teacher).item() == pytest.approx(expected, rel=1e-6)


def test_attention_kl_properties():
    s = _scores(4).requires_grad_()
    assert attention_kl(s, s.detach(), MASK, mask_queries=True).item() == pytest.approx(0.0, abs=1e-7)
    # Padding invariance with mask_queries: scores touching a padded token do not matter.
    t = _scores(5)
    moved_s, moved_t = s.detach().clone(), t.clone()
    moved_s[1, :, 2, :] = 50.0
    moved_s[1, :, :, 2] = -7.0
    moved_t[1, :, :, 2] = 9.0
    before = attention_kl(s, t, MASK, mask_queries=True)
    assert attention_kl(moved_s, moved_t, MASK, mask_queries=True).item() == pytest.approx(before.item(), rel=1e-6)
    before.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()
    assert s.grad[1, :, :, 2].abs().max() == 0 and s.grad[1, :, 2, :].abs().max() == 0


# ---------------------------------------------------------------- GKD double softmax
def test_double_softmax_matches_loops():
    ps, pt = _scores(6).softmax(-1), _scores(7).softmax(-1)
    total, rows = 0.0, 0
    for b in range(2):
        for h in range(2):
            for i in range(3):
                p = _softmax([float(v) for v in pt[b, h, i]])
                q = _softmax([float(v) for v in ps[b, h, i]])
                total += _kl(p, q)
                rows += 1
    assert attention_probs_double_softmax_kl(ps, pt).item() == pytest.approx(total / rows, rel=1e-5)
    # It is much weaker than the KL between the distributions themselves.
    assert attention_probs_double_softmax_kl(ps, pt).item() < 0.2 * attention_kl(ps.log(), pt.log()).item()


def test_double_softmax_query_mask_drops_rows_only():
    ps, pt = _scores(6).softmax(-1), _scores(7).softmax(-1)
    per_row = attention_probs_double_softmax_kl(ps[:, :, :1], pt[:, :, :1])  # sanity: one query row works
    assert per_row.item() > 0
    full = attention_probs_double_softmax_kl(ps, pt, MASK, mask_queries=True)
    kept = [(b, i) for b in range(2) for i in range(3) if MASK[b, i]]
    expected = sum(
        _kl(_softmax([float(v) for v in pt[b, h, i]]), _softmax([float(v) for v in ps[b, h, i]])) for b, i in kept for h in range(2)
    ) / (2 * len(kept))
    assert full.item() == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------- relations (MiniLM VR, MiniLMv2)
def test_split_relation_heads_and_errors():
    x = torch.arange(2 * 3 * 8, dtype=torch.float32).view(2, 3, 8)
    split = split_relation_heads(x, 4)
    assert split.shape == (2, 4, 3, 2)
    torch.testing.assert_close(split[1, 2, 0], x[1, 0, 4:6])
    with pytest.raises(ValueError, match="divide the width 8"):
        split_relation_heads(x, 3)


def test_self_relation_logits_hand_computed():
    x = torch.tensor([[[[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]]])  # d_a = 4 → scale 1/2
    expected = torch.tensor([[[[0.5, 0.5], [0.5, 2.0]]]])
    torch.testing.assert_close(self_relation_logits(x), expected)


def _loop_relation_kl(s, t, mask):
    total, rows = 0.0, 0
    for b in range(s.shape[0]):
        keys = [j for j in range(s.shape[2]) if mask is None or mask[b, j]]
        for a in range(s.shape[1]):
            for i in keys:
                rel_t = [float(t[b, a, i] @ t[b, a, j]) / math.sqrt(t.shape[-1]) for j in keys]
                rel_s = [float(s[b, a, i] @ s[b, a, j]) / math.sqrt(s.shape[-1]) for j in keys]
                total += _kl(_softmax(rel_t), _softmax(rel_s))
                rows += 1
    return total / rows


@pytest.mark.parametrize("mask_padding", [False, True])
def test_relation_kl_matches_loops_with_different_widths(mask_padding):
    g = torch.Generator().manual_seed(8)
    s, t = torch.randn(2, 3, 3, 2, generator=g), torch.randn(2, 3, 3, 5, generator=g)
    expected = _loop_relation_kl(s, t, MASK if mask_padding else None)
    assert relation_kl(s, t, MASK, mask_padding=mask_padding).item() == pytest.approx(expected, rel=1e-5)


def test_relation_kl_properties():
    g = torch.Generator().manual_seed(9)
    s = torch.randn(2, 2, 3, 4, generator=g, requires_grad=True)
    assert relation_kl(s, s.detach(), MASK, mask_padding=True).item() == pytest.approx(0.0, abs=1e-7)
    t = torch.randn(2, 2, 3, 4, generator=g)
    moved_s, moved_t = s.detach().clone(), t.clone()
    moved_s[1, :, 2] = 100.0
    moved_t[1, :, 2] = -3.0
    loss = relation_kl(s, t, MASK, mask_padding=True)
    assert relation_kl(moved_s, moved_t, MASK, mask_padding=True).item() == pytest.approx(loss.item(), rel=1e-6)
    loss.backward()
    assert s.grad[1, :, 2].abs().max() == 0 and s.grad[0].abs().max() > 0
    with pytest.raises(ValueError, match="same number of heads"):
        relation_kl(torch.randn(2, 2, 3, 4), torch.randn(2, 3, 3, 4))
    with pytest.raises(ValueError, match="attention_mask"):
        relation_kl(s, t, None, mask_padding=True)


def test_per_sample_values_average_to_the_scalar():
    s, t = _scores(10), _scores(11)
    for fn in (attention_score_mse, attention_kl):
        per_sample = fn(s, t, per_sample=True)
        assert per_sample.shape == (2,)
        assert per_sample.mean().item() == pytest.approx(fn(s, t).item(), rel=1e-6)
    assert attention_kl(s, t, MASK, mask_queries=True, per_sample=True)[0].item() == pytest.approx(
        attention_kl(s[:1], t[:1], MASK[:1], mask_queries=True).item(), rel=1e-6
    )

"""Logit losses and masked reductions against written-out formulas and their properties."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_kd.losses.logits import logits_mse, soft_cross_entropy, soft_kl
from lightning_kd.losses.masking import reduce_masked, reduce_masked_per_sample
from lightning_kd.losses.prediction import PredictionLoss


def _softmax(row, t):
    e = [math.exp(v / t) for v in row]
    return [v / sum(e) for v in e]


def test_soft_kl_matches_hand_computed_value():
    zs = torch.tensor([[1.0, 2.0, 0.5]])
    zt = torch.tensor([[0.3, 2.5, -1.0]])
    T = 2.0
    p, q = _softmax([0.3, 2.5, -1.0], T), _softmax([1.0, 2.0, 0.5], T)
    expected = T * T * sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    assert soft_kl(zs, zt, T).item() == pytest.approx(expected, rel=1e-6)
    assert soft_kl(zs, zt, T, t2_scale=False).item() == pytest.approx(expected / 4, rel=1e-6)


def test_soft_ce_is_kl_plus_teacher_entropy():
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    p = torch.softmax(zt / 3, -1)
    entropy = -(p * p.log()).sum(-1).mean()
    torch.testing.assert_close(soft_cross_entropy(zs, zt, 3.0), soft_kl(zs, zt, 3.0, t2_scale=False) + entropy)


def test_kl_and_mse_are_zero_when_student_equals_teacher():
    z = torch.randn(3, 6, 11)
    assert soft_kl(z, z.clone(), 4.0).abs().item() < 1e-6
    assert logits_mse(z, z.clone()).item() == 0.0


def test_t2_scaling_keeps_gradient_magnitude_for_large_t():
    g = torch.Generator().manual_seed(1)
    zs, zt = torch.randn(8, 5, generator=g, requires_grad=True), torch.randn(8, 5, generator=g)
    grads = []
    for T in (1.0, 10.0, 100.0):
        zs.grad = None
        soft_kl(zs, zt, T).backward()
        grads.append(zs.grad.norm().item())  # with T², dL/dz_s -> (z_s - z_t)/K as T grows: independent of T
    assert grads[1] == pytest.approx(grads[2], rel=0.05)


def test_masked_mean_ignores_padding_values_and_gkd_divides_by_all():
    values = torch.tensor([[1.0, 3.0, 100.0], [2.0, 50.0, 60.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert reduce_masked(values, mask).item() == pytest.approx((1 + 3 + 2) / 3)
    assert reduce_masked(values, mask, "gkd").item() == pytest.approx((1 + 3 + 2) / 6)
    torch.testing.assert_close(reduce_masked_per_sample(values, mask), torch.tensor([2.0, 2.0]))
    assert reduce_masked(values, torch.zeros_like(mask)).item() == 0.0


def test_padding_never_changes_a_masked_token_loss():
    g = torch.Generator().manual_seed(2)
    zs, zt = torch.randn(2, 5, 9, generator=g), torch.randn(2, 5, 9, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]])
    zs2, zt2 = zs.clone(), zt.clone()
    zs2[mask == 0] = torch.randn(3, 9, generator=g) * 100
    zt2[mask == 0] = torch.randn(3, 9, generator=g) * 100
    for fn in (soft_kl, soft_cross_entropy):
        torch.testing.assert_close(fn(zs, zt, 2.0, mask), fn(zs2, zt2, 2.0, mask))
    torch.testing.assert_close(logits_mse(zs, zt, mask), logits_mse(zs2, zt2, mask))


def test_prediction_loss_mask_modes():
    labels = torch.tensor([[-100, 5, -100, -100]])
    attention = torch.tensor([[1, 1, 1, 0]])
    batch = {"labels": labels, "attention_mask": attention}
    logits = torch.zeros(1, 4, 10)
    assert PredictionLoss(soft_positions="masked_tokens").soft_mask(batch, logits).tolist() == [[False, True, False, False]]
    assert PredictionLoss(soft_positions="all_tokens").soft_mask(batch, logits).tolist() == [[True, True, True, False]]
    assert PredictionLoss(soft_positions="all_positions").soft_mask(batch, logits) is None
    assert PredictionLoss().soft_mask({"labels": torch.tensor([1])}, torch.zeros(1, 3)) is None


def test_no_gradient_reaches_the_teacher_logits():
    zs = torch.randn(4, 3, requires_grad=True)
    zt = torch.randn(4, 3, requires_grad=True)
    PredictionLoss(temperature=2.0).soft(zs, zt.detach(), {}).backward()
    assert zs.grad is not None and zt.grad is None


@pytest.mark.parametrize("reduction", ["masked_mean", "gkd"])
def test_masked_losses_equal_the_full_row_formula_and_skip_dropped_rows(reduction):
    """Only the kept rows are computed; values, per-sample values and gradients equal the full-row
    formula written out here, a non-finite dropped row changes nothing and gets no gradient."""
    g = torch.Generator().manual_seed(4)
    zs, zt = torch.randn(3, 6, 11, generator=g), torch.randn(3, 6, 11, generator=g)
    mask = torch.tensor([[1, 0, 0, 1, 0, 0], [0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    T = 2.0

    def full_rows(kind, s, t):
        log_p_s, log_p_t = (s / T).log_softmax(-1), (t / T).log_softmax(-1)
        if kind == "kl":
            return T * T * (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)
        if kind == "ce":
            return -(log_p_t.exp() * log_p_s).sum(-1)
        return (s - t).pow(2).mean(-1)

    def reference(kind, s, per_sample):
        rows = full_rows(kind, s, zt) * mask
        denominators = torch.full((3,), 6.0) if reduction == "gkd" else mask.sum(1).float().clamp_min(1)
        if per_sample:
            return rows.sum(1) / denominators
        return rows.sum() / (18.0 if reduction == "gkd" else mask.sum().float())

    calls = {
        "kl": lambda s, t, ps: soft_kl(s, t, T, mask, reduction, per_sample=ps),
        "ce": lambda s, t, ps: soft_cross_entropy(s, t, T, mask, reduction, per_sample=ps),
        "mse": lambda s, t, ps: logits_mse(s, t, mask, reduction, per_sample=ps),
    }
    for kind, call in calls.items():
        for per_sample in (False, True):
            s = zs.clone().requires_grad_(True)
            got = call(s, zt, per_sample)
            s_ref = zs.clone().requires_grad_(True)
            expected = reference(kind, s_ref, per_sample)
            torch.testing.assert_close(got, expected)
            torch.testing.assert_close(torch.autograd.grad(got.sum(), s)[0], torch.autograd.grad(expected.sum(), s_ref)[0])
        poisoned_s, poisoned_t = zs.clone().requires_grad_(True), zt.clone()
        with torch.no_grad():
            poisoned_s[~mask] = float("nan")
        poisoned_t[~mask] = float("inf")
        value = call(poisoned_s, poisoned_t, False)
        torch.testing.assert_close(value, reference(kind, zs, False))
        (grad,) = torch.autograd.grad(value, poisoned_s)
        assert torch.isfinite(grad).all() and grad[~mask].abs().sum() == 0


@pytest.mark.parametrize("fn", [soft_kl, soft_cross_entropy])
def test_fused_soft_targets_match_autograd_across_chunks_and_for_targets_with_a_graph(fn, monkeypatch):
    """The chunked kernel (frozen-teacher path) equals the autograd path (targets that carry a
    graph), with any chunk size; the autograd path also sends gradients into the targets."""
    from lightning_kd.losses import logits

    g = torch.Generator().manual_seed(5)
    zs, zt = torch.randn(4, 7, 13, generator=g), torch.randn(4, 7, 13, generator=g)
    mask = torch.rand(4, 7, generator=g) > 0.4
    weights = torch.rand(4, generator=g)

    def run(teacher_grad):
        s, t = zs.clone().requires_grad_(True), zt.clone().requires_grad_(teacher_grad)
        value = (fn(s, t, 1.5, mask, per_sample=True) * weights).sum()
        grads = torch.autograd.grad(value, (s, t) if teacher_grad else (s,))
        return value.detach(), grads

    fused_value, (fused_grad,) = run(False)
    plain_value, (plain_grad, teacher_grad) = run(True)
    torch.testing.assert_close(fused_value, plain_value)
    torch.testing.assert_close(fused_grad, plain_grad)
    assert teacher_grad.abs().sum() > 0
    monkeypatch.setattr(logits, "CHUNK_ELEMENTS", 3 * 13)  # three rows a chunk, a short last chunk
    chunked_value, (chunked_grad,) = run(False)
    torch.testing.assert_close(chunked_value, fused_value)
    torch.testing.assert_close(chunked_grad, fused_grad)


def test_fused_soft_targets_keep_the_student_dtype_and_float32_math():
    zs = torch.randn(2, 5, 11).bfloat16().requires_grad_(True)
    zt = torch.randn(2, 5, 11).bfloat16()
    value = soft_kl(zs, zt, 2.0, torch.ones(2, 5, dtype=torch.bool))
    assert value.dtype == torch.float32
    expected = soft_kl(zs.detach().float().requires_grad_(True), zt.float(), 2.0, torch.ones(2, 5, dtype=torch.bool))
    torch.testing.assert_close(value, expected)
    value.backward()
    assert zs.grad.dtype == torch.bfloat16

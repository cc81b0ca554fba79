"""Soft divergences (reverse KL, generalized JSD, skew KL, total variation, and KL/CE through the same
kernel) against formulas written here on probabilities, and their properties: values, reductions,
compact rows, gradients of the fused kernel, chunking, the autograd path, and PredictionLoss."""

from __future__ import annotations

import pytest
import torch

from lightning_kd.losses import logits
from lightning_kd.losses.logits import soft_cross_entropy, soft_divergence, soft_kl
from lightning_kd.losses.prediction import PredictionLoss
from tests.losses.reference_divergences import divergence_of_probabilities

KINDS = ["kl", "ce", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tvd", "argmax_ce"]
KL_FAMILY = [kind for kind in KINDS if kind != "tvd"]
B, N, V = 3, 6, 11
T = 2.0
BETA, ALPHA = 0.3, 0.2  # off their defaults, so a weight that is not passed through shows


def _reference_rows(kind: str, zs: torch.Tensor, zt: torch.Tensor, temperature: float = T,
                    beta: float = BETA, alpha: float = ALPHA) -> torch.Tensor:
    """Per-row divergence in float64, written on probabilities (no library code)."""
    q = torch.softmax(zs.double() / temperature, -1)
    p = torch.softmax(zt.double() / temperature, -1)
    return divergence_of_probabilities(kind, p, q, beta, alpha)


def _call(kind: str, zs, zt, temperature: float = T, mask=None, reduction="masked_mean", t2_scale=False,
          per_sample=False, positions=None, beta: float = BETA, alpha: float = ALPHA):
    return soft_divergence(zs, zt, kind, temperature, mask, reduction, t2_scale, per_sample, positions,
                           jsd_beta=beta, skew_alpha=alpha)


def _logits(seed: int, shape=(B, N, V), scale: float = 2.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


MASK = torch.tensor([[1, 0, 0, 1, 0, 1], [0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0]], dtype=torch.bool)


def _reduce_reference(rows: torch.Tensor, mask: torch.Tensor | None, reduction: str, per_sample: bool) -> torch.Tensor:
    if mask is None:
        return rows.mean(1) if per_sample else rows.mean()
    rows = rows * mask
    if per_sample:
        return rows.sum(1) / (torch.full((B,), float(N)) if reduction == "gkd" else mask.sum(1).clamp_min(1)).double()
    return rows.sum() / (B * N if reduction == "gkd" else mask.sum())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reduction", ["masked_mean", "gkd"])
@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_values_and_gradients_equal_the_written_formula(kind, reduction, per_sample, masked):
    zs, zt = _logits(0), _logits(1)
    mask = MASK if masked else None
    weights = torch.rand(B, generator=torch.Generator().manual_seed(2)) if per_sample else torch.tensor(1.0)
    s = zs.clone().requires_grad_(True)
    got = _call(kind, s, zt, mask=mask, reduction=reduction, per_sample=per_sample)
    s_ref = zs.double().requires_grad_(True)
    expected = _reduce_reference(_reference_rows(kind, s_ref, zt), mask, reduction, per_sample)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-7)
    (grad,) = torch.autograd.grad((got * weights).sum(), s)
    (grad_ref,) = torch.autograd.grad((expected * weights.double()).sum(), s_ref)
    torch.testing.assert_close(grad.double(), grad_ref, rtol=1e-5, atol=1e-7)
    if masked:
        assert not grad[~MASK].any(), "rows off the mask get no gradient"


@pytest.mark.parametrize("kind", KINDS)
def test_dropped_rows_never_matter_even_when_not_finite(kind):
    zs, zt = _logits(3), _logits(4)
    poisoned_s, poisoned_t = zs.clone(), zt.clone()
    poisoned_s[~MASK], poisoned_t[~MASK] = float("nan"), float("inf")
    poisoned_s.requires_grad_(True)
    value = _call(kind, poisoned_s, poisoned_t, mask=MASK)
    torch.testing.assert_close(value, _call(kind, zs, zt, mask=MASK))
    (grad,) = torch.autograd.grad(value, poisoned_s)
    assert torch.isfinite(grad).all() and not grad[~MASK].any()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reduction", ["masked_mean", "gkd"])
@pytest.mark.parametrize("per_sample", [False, True])
def test_compact_rows_equal_masked_whole_logits(kind, reduction, per_sample):
    zt = _logits(5)
    whole_s = _logits(6).requires_grad_(True)
    rows_s = whole_s.detach()[MASK].clone().requires_grad_(True)
    whole = _call(kind, whole_s, zt, mask=MASK, reduction=reduction, per_sample=per_sample, t2_scale=True)
    rows = _call(kind, rows_s, zt[MASK], reduction=reduction, per_sample=per_sample, t2_scale=True, positions=MASK)
    torch.testing.assert_close(rows, whole, rtol=1e-5, atol=1e-7)
    weights = torch.arange(1.0, B + 1) if per_sample else torch.tensor(1.0)
    (grad_whole,) = torch.autograd.grad((whole * weights).sum(), whole_s)
    (grad_rows,) = torch.autograd.grad((rows * weights).sum(), rows_s)
    torch.testing.assert_close(grad_rows, grad_whole[MASK], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_every_divergence_is_zero_for_identical_inputs(kind, beta):
    z = _logits(7, scale=4.0).requires_grad_(True)
    value = _call(kind, z, z.detach().clone(), temperature=3.0, t2_scale=True, beta=beta)
    if kind == "argmax_ce":  # a one-hot target: 0 only where the student is sure of the teacher's top class
        assert value.item() > 0
        return
    assert abs(value.item()) < 1e-6 if kind != "ce" else value.item() > 0  # ce is the teacher's entropy there
    (grad,) = torch.autograd.grad(value, z)
    assert grad.abs().max() < 1e-6


def test_argmax_ce_reads_only_the_teachers_top_class():
    zs, zt = _logits(31), _logits(32)
    top = zt.argmax(-1)
    # Any change of the teacher that keeps its top class changes nothing, whatever the temperature.
    reshaped = zt * 0.1 + 5.0 * torch.nn.functional.one_hot(top, V)
    torch.testing.assert_close(_call("argmax_ce", zs, reshaped, temperature=1.0), _call("argmax_ce", zs, zt, temperature=1.0))
    torch.testing.assert_close(_call("argmax_ce", zs, zt, temperature=0.5), _call("argmax_ce", zs, reshaped, temperature=0.5))
    # It is the cross-entropy with that class as a label; 0 (and no gradient) for a student sure of it.
    hard = torch.nn.functional.cross_entropy(zs.reshape(-1, V), top.reshape(-1))
    torch.testing.assert_close(_call("argmax_ce", zs, zt, temperature=1.0), hard)
    sure = (100.0 * torch.nn.functional.one_hot(top, V).float()).requires_grad_(True)
    value = _call("argmax_ce", sure, zt, temperature=1.0)
    (grad,) = torch.autograd.grad(value, sure)
    assert value.item() < 1e-6 and grad.abs().max() < 1e-6


def test_jsd_is_symmetric_at_one_half():
    zs, zt = _logits(8), _logits(9)
    torch.testing.assert_close(_call("jsd", zs, zt, beta=0.5), _call("jsd", zt, zs, beta=0.5))
    with pytest.raises(AssertionError):  # not at another β: its roles are not interchangeable
        torch.testing.assert_close(_call("jsd", zs, zt, beta=0.2), _call("jsd", zt, zs, beta=0.2))


@pytest.mark.parametrize(("beta", "direction"), [(0.0, "kl"), (1.0, "reverse_kl")])
def test_jsd_ends_are_exactly_forward_and_reverse_kl(beta, direction):
    zs, zt = _logits(10), _logits(11)
    value_s, direction_s = zs.clone().requires_grad_(True), zs.clone().requires_grad_(True)
    value = _call("jsd", value_s, zt, mask=MASK, t2_scale=True, beta=beta)
    expected = _call(direction, direction_s, zt, mask=MASK, t2_scale=True)
    assert torch.equal(value, expected)
    value.backward(), expected.backward()
    assert torch.equal(value_s.grad, direction_s.grad)
    # The ends are the limit directions of the interior: JSD_β/β → KL(p‖q), JSD_β/(1−β) → KL(q‖p).
    near = _call("jsd", zs, zt, mask=MASK, t2_scale=True, beta=abs(beta - 1e-4)) / 1e-4
    torch.testing.assert_close(near, expected, rtol=1e-2, atol=0)


@pytest.mark.parametrize("kind", ["skew_kl", "skew_reverse_kl"])
def test_skew_divergences_vanish_at_alpha_one_and_are_kl_near_zero(kind):
    zs, zt = _logits(12).requires_grad_(True), _logits(13)
    value = _call(kind, zs, zt, alpha=1.0)
    assert value.item() == 0.0
    (grad,) = torch.autograd.grad(value, zs)
    assert not grad.any()
    plain = "kl" if kind == "skew_kl" else "reverse_kl"
    torch.testing.assert_close(_call(kind, zs, zt, alpha=1e-6), _call(plain, zs, zt), rtol=1e-4, atol=0)


def test_total_variation_is_between_zero_and_one():
    zs, zt = _logits(14, scale=30.0), _logits(15, scale=30.0)  # nearly one-hot rows, often disjoint
    rows = _call("tvd", zs, zt, per_sample=True, mask=torch.ones(B, N, dtype=torch.bool))
    assert (rows >= 0).all() and (rows <= 1).all()
    disjoint = torch.tensor([[100.0, 0.0, 0.0]]), torch.tensor([[0.0, 100.0, 0.0]])
    assert _call("tvd", *disjoint, temperature=1.0).item() == pytest.approx(1.0)


@pytest.mark.parametrize("kind", KINDS)
def test_t2_scale_multiplies_the_kl_family_only(kind):
    zs, zt = _logits(16), _logits(17)
    ratio = (_call(kind, zs, zt, temperature=3.0, t2_scale=True) / _call(kind, zs, zt, temperature=3.0)).item()
    assert ratio == pytest.approx(9.0 if kind in KL_FAMILY else 1.0, rel=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_the_student_only_and_the_autograd_path_agrees(kind):
    """A frozen teacher gets no gradient; teacher logits with a graph run plain autograd, which gives
    the fused kernel's value and student gradient and sends a gradient into the teacher."""
    zs, zt = _logits(18), _logits(19)
    weights = torch.rand(B, generator=torch.Generator().manual_seed(20))
    fused_s, teacher = zs.clone().requires_grad_(True), zt.clone().requires_grad_(True)
    fused = (_call(kind, fused_s, teacher.detach(), mask=MASK, per_sample=True) * weights).sum()
    fused.backward()
    assert fused_s.grad is not None and teacher.grad is None
    plain_s = zs.clone().requires_grad_(True)
    plain = (_call(kind, plain_s, teacher, mask=MASK, per_sample=True) * weights).sum()
    plain.backward()
    torch.testing.assert_close(plain, fused)
    torch.testing.assert_close(plain_s.grad, fused_s.grad)
    if kind == "argmax_ce":  # the teacher enters through its argmax only, which has no gradient
        assert teacher.grad is None
    else:
        assert teacher.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("masked", [False, True])
def test_chunking_changes_nothing(kind, masked, monkeypatch):
    zs, zt = _logits(21), _logits(22)
    mask = MASK if masked else None

    def run():
        s = zs.clone().requires_grad_(True)
        value = _call(kind, s, zt, mask=mask, per_sample=True)
        return value.detach(), torch.autograd.grad((value * torch.arange(1.0, B + 1)).sum(), s)[0]

    whole_value, whole_grad = run()
    monkeypatch.setattr(logits, "CHUNK_ELEMENTS", 4 * V)  # four rows a chunk, a short last chunk
    chunked_value, chunked_grad = run()
    torch.testing.assert_close(chunked_value, whole_value)  # vectorised sums may round by chunk shape
    torch.testing.assert_close(chunked_grad, whole_grad)


@pytest.mark.parametrize("kind", KINDS)
def test_float32_math_and_the_student_dtype_for_bf16_logits(kind):
    zs, zt = _logits(23).bfloat16().requires_grad_(True), _logits(24).bfloat16()
    value = _call(kind, zs, zt, mask=MASK)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, _call(kind, zs.detach().float(), zt.float(), mask=MASK))
    value.backward()
    assert zs.grad.dtype == torch.bfloat16


def test_kl_and_ce_wrappers_are_the_divergences():
    zs, zt = _logits(25), _logits(26)
    assert torch.equal(soft_kl(zs, zt, T, MASK), soft_divergence(zs, zt, "kl", T, MASK))
    assert torch.equal(soft_cross_entropy(zs, zt, T, MASK), soft_divergence(zs, zt, "ce", T, MASK, t2_scale=False))


@pytest.mark.parametrize("kind", KINDS)
def test_prediction_loss_soft_term_on_token_logits(kind):
    labels = torch.full((B, N), -100)
    labels[MASK] = 7
    batch = {"labels": labels, "attention_mask": torch.ones(B, N, dtype=torch.long)}
    zs, zt = _logits(27), _logits(28)
    loss = PredictionLoss(soft_weight=0.7, temperature=T, soft_loss=kind, jsd_beta=BETA, skew_alpha=ALPHA)
    rows = _reference_rows(kind, zs, zt)
    scale = T * T if kind in KL_FAMILY else 1.0  # t2_scale=True (the default) leaves TV as it is
    expected = 0.7 * scale * (rows * MASK).sum() / MASK.sum()
    torch.testing.assert_close(loss.soft(zs, zt, batch).double(), expected, rtol=1e-5, atol=1e-7)
    per_sample = loss.soft(zs, zt, batch, per_sample=True)
    torch.testing.assert_close(per_sample.double(), 0.7 * scale * (rows * MASK).sum(1) / MASK.sum(1).clamp_min(1),
                               rtol=1e-5, atol=1e-7)
    if kind in KL_FAMILY and kind != "argmax_ce":
        with_class_mean = PredictionLoss(soft_weight=0.7, temperature=T, soft_loss=kind, jsd_beta=BETA, skew_alpha=ALPHA,
                                         class_mean=True)
        torch.testing.assert_close(with_class_mean.soft(zs, zt, batch), loss.soft(zs, zt, batch) / V)


@pytest.mark.parametrize(("options", "message"), [
    ({"jsd_beta": -0.1}, "jsd_beta"), ({"jsd_beta": 1.5}, "jsd_beta"), ({"jsd_beta": float("nan")}, "jsd_beta"),
    ({"skew_alpha": 0.0}, "skew_alpha"), ({"skew_alpha": 1.01}, "skew_alpha"),
    ({"soft_loss": "js"}, "soft_loss"), ({"soft_loss": "tvd", "class_mean": True}, "class_mean"),
    ({"soft_loss": "argmax_ce", "class_mean": True}, "class_mean"),
])
def test_prediction_loss_refuses_bad_settings(options, message):
    with pytest.raises(ValueError, match=message):
        PredictionLoss(**options)


@pytest.mark.parametrize(("kind", "options", "message"), [
    ("js", {}, "Unknown soft divergence"), ("jsd", {"jsd_beta": 2.0}, "jsd_beta"), ("skew_kl", {"skew_alpha": 0.0}, "skew_alpha"),
])
def test_soft_divergence_refuses_bad_arguments(kind, options, message):
    with pytest.raises(ValueError, match=message):
        soft_divergence(_logits(29), _logits(30), kind, **options)

"""A top-k teacher with a tail bucket: every divergence equals an independent float64 formula over the
``k + 1`` buckets (values and gradients), is exact at ``k = V``, never exceeds the full divergence, and
gives the same numbers through the fused head kernel, whatever its chunk size."""

from __future__ import annotations

import pytest
import torch

from lightning_kd.losses.fused_linear import LinearHead, SoftSpec, fused_linear_terms
from lightning_kd.losses.logits import soft_divergence
from lightning_kd.losses.topk_teacher import EMPTY, TopKTeacher
from tests.losses.reference_divergences import divergence_of_probabilities

KINDS = ["kl", "ce", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tvd"]
BETA, ALPHA = 0.3, 0.2


def _buckets(probs: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """(rows, k + 1): the probabilities at the kept ids, then the sum of all the others."""
    top = probs.gather(-1, kept)
    return torch.cat([top, (probs.sum(-1) - top.sum(-1)).unsqueeze(-1)], dim=-1)


def _logits(rows: int = 6, vocab: int = 40, seed: int = 0, scale: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, vocab, generator=g) * scale, torch.randn(rows, vocab, generator=g) * scale


def _ours(kind, student, teacher, temperature):
    return soft_divergence(student, teacher, kind, temperature, t2_scale=False, jsd_beta=BETA, skew_alpha=ALPHA)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("k", [1, 5, 39])
def test_every_divergence_is_the_bucket_formula(kind, k):
    temperature = 1.7
    z_s, z_t = _logits()
    teacher = TopKTeacher.of_logits(z_t, k, temperature)
    student = z_s.clone().requires_grad_(True)
    ours = _ours(kind, student, teacher, temperature)
    ours.backward()

    reference_student = z_s.double().requires_grad_(True)
    p = torch.softmax(z_t.double() / temperature, -1)
    q = torch.softmax(reference_student / temperature, -1)
    kept = p.topk(k, -1).indices
    want = divergence_of_probabilities(kind, _buckets(p, kept), _buckets(q, kept), BETA, ALPHA).mean()
    want.backward()
    torch.testing.assert_close(ours.double(), want, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(student.grad.double(), reference_student.grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("kind", KINDS)
def test_the_whole_vocabulary_is_the_exact_divergence(kind):
    z_s, z_t = _logits()
    teacher = TopKTeacher.of_logits(z_t, z_t.shape[-1], 2.0)
    assert bool((teacher.tail == EMPTY).all())
    a, b = z_s.clone().requires_grad_(True), z_s.clone().requires_grad_(True)
    ours, exact = _ours(kind, a, teacher, 2.0), _ours(kind, b, z_t, 2.0)
    ours.backward(), exact.backward()
    torch.testing.assert_close(ours, exact, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "ce"])  # ce is KL plus the teacher's (bucket) entropy
def test_merging_the_tail_never_exceeds_the_full_divergence(kind):
    z_s, z_t = _logits(rows=32, seed=3)
    full = soft_divergence(z_s, z_t, kind, 1.0, t2_scale=False, jsd_beta=BETA, skew_alpha=ALPHA, reduction="masked_mean", per_sample=False)
    for k in (1, 4, 16, 40):
        assert float(_ours(kind, z_s, TopKTeacher.of_logits(z_t, k, 1.0), 1.0)) <= float(full) + 1e-6


@pytest.mark.parametrize("k", [1, 3, 40])
def test_argmax_ce_is_exact_at_every_k(k):
    """The top class is always kept, so the target never falls on the tail bucket, even where the tail
    holds more mass than the top id (flat teachers, k = 1)."""
    z_s, z_t = _logits(seed=5, scale=0.3)  # flat: the tail outweighs the top id at k = 1
    teacher = TopKTeacher.of_logits(z_t, k, 1.0)
    if k == 1:
        assert bool((teacher.tail > teacher.log_probs[:, 0]).all())
    a, b = z_s.clone().requires_grad_(True), z_s.clone().requires_grad_(True)
    ours, exact = _ours("argmax_ce", a, teacher, 1.0), _ours("argmax_ce", b, z_t, 1.0)
    ours.backward(), exact.backward()
    torch.testing.assert_close(ours, exact, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7)


def test_the_tail_keeps_mass_that_rounding_would_lose():
    logits = torch.tensor([[40.0, 0.0, -1.0, -2.0]])  # the kept mass is 1 - 4e-18 in float32
    teacher = TopKTeacher.of_logits(logits, 1, 1.0)
    want = torch.log(torch.exp(torch.tensor([0.0, -1.0, -2.0], dtype=torch.float64)).sum()) - 40.0
    torch.testing.assert_close(teacher.tail.double(), want.view(1), rtol=1e-6, atol=0)


def test_a_teacher_at_another_temperature_is_refused():
    z_s, z_t = _logits()
    with pytest.raises(ValueError, match="temperature"):
        _ours("kl", z_s, TopKTeacher.of_logits(z_t, 4, 1.0), 2.0)


@pytest.mark.parametrize("kind", ["kl", "jsd", "skew_reverse_kl", "tvd"])
@pytest.mark.parametrize("chunk_rows", [1, 3, None])
def test_the_fused_kernel_reads_the_same_buckets(kind, chunk_rows):
    g = torch.Generator().manual_seed(1)
    rows, width, vocab, temperature = 7, 8, 50, 1.5
    x = torch.randn(rows, width, generator=g)
    head = LinearHead(torch.randn(vocab, width, generator=g).requires_grad_(True), torch.randn(vocab, generator=g).requires_grad_(True))
    teacher = TopKTeacher.of_logits(torch.randn(rows, vocab, generator=g) * 3, 6, temperature)
    weights = torch.tensor([1.0, 0.0, 2.0, 1.0, 0.5, 1.0, 0.0])  # rows with 0 are never projected
    spec = SoftSpec(weights, kind, temperature, jsd_beta=BETA, skew_alpha=ALPHA)

    fused_x = x.clone().requires_grad_(True)
    fused = fused_linear_terms(fused_x, head, soft=spec, teacher_topk=teacher, chunk_rows=chunk_rows)["soft"]
    fused.backward()
    fused_grads = [fused_x.grad, head.weight.grad.clone(), head.bias.grad.clone()]
    head.weight.grad = head.bias.grad = None

    plain_x = x.clone().requires_grad_(True)
    logits = head.project(plain_x)
    per_row = soft_divergence(logits, teacher, kind, temperature, t2_scale=False, jsd_beta=BETA, skew_alpha=ALPHA, per_sample=True,
                              reduction="masked_mean", mask=None)
    plain = (per_row * weights).sum()
    plain.backward()
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)
    for ours, theirs in zip(fused_grads, [plain_x.grad, head.weight.grad, head.bias.grad]):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)

"""Attention over teacher layers (ALP-KD, Universal-KD) against hand-computed values and loops."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_kd.losses.layer_attention import attended_kl, attended_mse, layer_attention


def test_layer_attention_hand_computed():
    # One example, one student layer s = (1, 0); teacher layers t1 = (1, 0), t2 = (0, 1).
    student = torch.tensor([[[1.0, 0.0]]])
    teacher = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    weights, targets = layer_attention(student, teacher)
    e = math.e
    w1, w2 = e / (e + 1), 1 / (e + 1)  # softmax of dot products (1, 0)
    torch.testing.assert_close(weights, torch.tensor([[[w1, w2]]]))
    torch.testing.assert_close(targets, torch.tensor([[[w1, w2]]]))
    # ALP loss: mean over d of (s - target)^2 = ((1 - w1)^2 + w2^2) / 2
    assert attended_mse(student, teacher).item() == pytest.approx(((1 - w1) ** 2 + w2**2) / 2, rel=1e-6)


def test_scale_divides_scores():
    student = torch.tensor([[[2.0, 0.0]]])
    teacher = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    weights, _ = layer_attention(student, teacher, scale=0.5)  # scores (1, 0)
    assert weights[0, 0, 0].item() == pytest.approx(math.e / (math.e + 1), rel=1e-6)


def _loop_alp(student, teacher):
    total = 0.0
    batch, layers_s, width = student.shape
    for i in range(layers_s):
        mse = 0.0
        for b in range(batch):
            scores = [float(student[b, i] @ teacher[b, j]) for j in range(teacher.shape[1])]
            top = max(scores)
            exps = [math.exp(s - top) for s in scores]
            alpha = [e / sum(exps) for e in exps]
            target = sum(a * teacher[b, j] for j, a in enumerate(alpha))
            mse += float(((student[b, i] - target) ** 2).sum())
        total += mse / (batch * width)
    return total


def _loop_ukd(u, v):
    total = 0.0
    batch, layers_s, _ = u.shape
    for k in range(layers_s):
        kl_sum = 0.0
        for b in range(batch):
            scores = torch.tensor([float(u[b, k] @ v[b, j]) for j in range(v.shape[1])], dtype=torch.float64)
            alpha = scores.softmax(0)
            target = (alpha[:, None] * v[b].double()).sum(0)
            p, q = target.softmax(0), u[b, k].double().softmax(0)
            kl_sum += float((p * (p.log() - q.log())).sum())
        total += kl_sum / batch
    return total


def test_attended_losses_match_loops_and_per_sample_means():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(3, 2, 5, generator=g), torch.randn(3, 4, 5, generator=g)
    assert attended_mse(student, teacher).item() == pytest.approx(_loop_alp(student, teacher), rel=1e-5)
    assert attended_kl(student, teacher).item() == pytest.approx(_loop_ukd(student, teacher), rel=1e-5)
    for fn in (attended_mse, attended_kl):
        per = fn(student, teacher, per_sample=True)
        assert per.shape == (3,)
        torch.testing.assert_close(per.mean(), fn(student, teacher))


def test_single_teacher_layer_is_a_plain_comparison():
    g = torch.Generator().manual_seed(1)
    u, v = torch.randn(4, 1, 6, generator=g), torch.randn(4, 1, 6, generator=g)
    p, log_q = v.softmax(-1), u.log_softmax(-1)
    expected = (p * (p.log() - log_q)).sum(-1).mean()
    torch.testing.assert_close(attended_kl(u, v), expected)
    torch.testing.assert_close(attended_mse(u, v), (u - v).pow(2).mean())


def test_gradient_flows_through_the_attention_weights():
    student = torch.randn(2, 2, 3, requires_grad=True)
    teacher = torch.randn(2, 3, 3, requires_grad=True)
    attended_kl(student, teacher).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is not None and teacher.grad.abs().sum() > 0


def test_width_mismatch_is_rejected():
    with pytest.raises(ValueError, match="project one side"):
        layer_attention(torch.randn(2, 1, 3), torch.randn(2, 2, 4))

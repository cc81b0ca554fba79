"""The fused word-angle kernel (losses/window_angle.py): values, its hand-written gradient, chunking.

The kernel differentiates by hand, so its gradient is checked three ways: against finite
differences (float64 gradcheck through the vectors), against autograd through an independent
formula that materialises every normalised difference vector, and across chunk boundaries.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_kd.losses import window_angle
from lightning_kd.losses.relation import word_relation_angle
from lightning_kd.losses.window_angle import fold_window_blocks, window_angle_gap, window_blocks, window_indices


def explicit_gap(x_s, x_t, keep, w):
    """Σ (A_S − A_T)² per row with every difference vector written out; differentiable by autograd."""
    rows, length, _ = x_s.shape
    index, at_centre = window_indices(length, w)

    def angles(x):
        diffs = x[:, index] - x[:, :, None]  # (N, S, w, D): x_{e_a} − x_v
        unit = F.normalize(diffs, dim=-1, eps=1e-12)
        dropped = at_centre | ~keep
        unit = unit.masked_fill(dropped[..., None], 0.0)
        return unit @ unit.transpose(-1, -2)  # (N, S, w, w)

    return (angles(x_s) - angles(x_t)).pow(2).sum(dim=(1, 2, 3))


def gram(x):
    return x @ x.transpose(-1, -2)


def inputs(seed=0, rows=3, length=7, d_s=5, d_t=6, w=5, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x_s = torch.randn(rows, length, d_s, generator=g, dtype=dtype)
    x_t = torch.randn(rows, length, d_t, generator=g, dtype=dtype)
    index, _ = window_indices(length, w)
    real = torch.ones(rows, length, dtype=torch.bool)
    real[1, length - 2 :] = False  # a padded row
    if rows > 2:
        real[2, 1:] = False  # one real token
    keep = real[:, :, None] & real[:, index]
    return x_s, x_t, keep


@pytest.mark.parametrize("length, w", [(6, 3), (7, 5), (4, 21)])
def test_window_blocks_gather_and_fold_is_their_adjoint(length, w):
    g = torch.randn(2, 3, length, length, dtype=torch.float64)
    index, _ = window_indices(length, w)
    blocks = window_blocks(g, (w - 1) // 2)
    torch.testing.assert_close(blocks, g[..., index[:, :, None], index[:, None, :]])
    y = torch.randn_like(blocks)
    # ⟨window_blocks(G), Y⟩ = ⟨G, fold(Y)⟩ for every G, Y: fold is the adjoint (the gather's backward).
    torch.testing.assert_close((blocks * y).sum(), (g * fold_window_blocks(y, (w - 1) // 2)).sum())


@pytest.mark.parametrize("w", [1, 3, 5, 21])
def test_values_and_gradients_match_the_explicit_formula(w):
    x_s, x_t, keep = inputs(w=w)
    x_s.requires_grad_(True)
    x_t.requires_grad_(True)
    weights = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)  # per-row output gradients
    got = window_angle_gap(gram(x_s), gram(x_t), keep, w)
    expected = explicit_gap(x_s, x_t, keep, w)
    torch.testing.assert_close(got, expected)
    got_grads = torch.autograd.grad((got * weights).sum(), (x_s, x_t))
    expected_grads = torch.autograd.grad((expected * weights).sum(), (x_s, x_t))
    for a, b in zip(got_grads, expected_grads):
        torch.testing.assert_close(a, b)


def test_gradcheck_through_the_vectors():
    x_s, x_t, keep = inputs(rows=2, length=6, d_s=4, d_t=3, w=5)
    x_s.requires_grad_(True)
    x_t.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: window_angle_gap(gram(a), gram(b), keep, 5), (x_s, x_t))


def test_student_only_gradient_and_no_graph_for_a_frozen_teacher():
    x_s, x_t, keep = inputs()
    x_s.requires_grad_(True)
    out = window_angle_gap(gram(x_s), gram(x_t), keep, 5)
    out.sum().backward()
    assert x_s.grad is not None and torch.isfinite(x_s.grad).all()
    assert x_s.grad[2].abs().sum() == 0  # a single real token has no angle: no gradient
    with torch.no_grad():
        torch.testing.assert_close(window_angle_gap(gram(x_s), gram(x_t), keep, 5), out.detach())


def test_chunks_give_the_same_values_and_gradients(monkeypatch):
    x_s, x_t, keep = inputs(rows=5, length=9, w=5, dtype=torch.float32)
    x_s.requires_grad_(True)

    def run():
        x_s.grad = None
        out = window_angle_gap(gram(x_s), gram(x_t), keep, 5)
        (out * torch.arange(1.0, 6.0)).sum().backward()
        return out.detach(), x_s.grad.clone()

    whole = run()
    monkeypatch.setattr(window_angle, "CHUNK_ELEMENTS", 2 * 9 * 25)  # two rows per chunk, a short last chunk
    chunked = run()
    torch.testing.assert_close(chunked, whole)


def test_word_angle_term_gradient_matches_the_explicit_formula():
    """The whole WR-Angle term (centring, shared Gram, masks, reduction) against the explicit formula."""
    g = torch.Generator().manual_seed(3)
    s = torch.randn(3, 2, 8, 5, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 2, 8, 7, generator=g, dtype=torch.float64)
    mask = torch.ones(3, 8, dtype=torch.bool)
    mask[1, 6:] = False
    got = word_relation_angle(s, t, mask, 5)
    index, _ = window_indices(8, 5)
    keep = (mask[:, :, None] & mask[:, index])[:, None].expand(-1, 2, -1, -1).flatten(0, 1)
    total = explicit_gap(s.flatten(0, 1), t.flatten(0, 1), keep, 5).sum()
    expected = total / (2 * keep.view(3, 2, 8, 5)[:, 0].sum(-1).double().pow(2).sum())
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(torch.autograd.grad(got, s)[0], torch.autograd.grad(expected, s)[0])

"""CKD relation losses (losses/relation.py) and MGSKD structural losses (losses/structure.py).

Each loss is checked against a loop-by-loop re-derivation from the spec written here with plain
torch (``ref_*``; the method tests reuse them), then against its properties: zero for identical
models, padding invariance, finite values and gradients on heavily padded batches.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_kd.losses.relation import (
    layer_relation_angle,
    layer_relation_distance,
    word_relation_angle,
    word_relation_distance,
)
from lightning_kd.losses.structure import (
    anchor_angle_loss,
    head_relations,
    pair_relation_mse,
    random_span_lengths,
    sample_structure_loss,
    span_pool,
    token_structure_loss,
    triplet_anchors,
)


# ---------------------------------------------------------------------------- CKD references
def _unit(v):
    return F.normalize(v.double(), dim=0, eps=1e-12)


def _angle(vertex, end1, end2):
    """Cosine of the angle at ``vertex`` (as ``⟨n(vertex − end1), n(vertex − end2)⟩``; sign-symmetric)."""
    return float(_unit(vertex - end1) @ _unit(vertex - end2))


def _kl_rows(t_scores, s_scores):
    p_t, log_p_t, log_p_s = t_scores.softmax(0), t_scores.log_softmax(0), s_scores.log_softmax(0)
    return float((p_t * (log_p_t - log_p_s)).sum())


def ref_word_distance(s, t, mask, reduction="masked_mean"):
    B, K, S, _ = s.shape
    total, count = 0.0, 0.0
    for b in range(B):
        real = [i for i in range(S) if mask[b, i]]
        n = len(real)
        count += K * (n * n if reduction == "gkd" else n * (n - 1))
        for k in range(K):
            for i in real:
                others = [j for j in real if j != i]
                if not others:
                    continue
                cs = torch.tensor([float(_unit(s[b, k, i]) @ _unit(s[b, k, j])) for j in others], dtype=torch.float64)
                ct = torch.tensor([float(_unit(t[b, k, i]) @ _unit(t[b, k, j])) for j in others], dtype=torch.float64)
                total += _kl_rows(ct, cs)
    return total / max(count, 1.0)


def ref_word_angle(s, t, mask, w, reduction="masked_mean"):
    B, K, S, _ = s.shape
    r = (w - 1) // 2
    total, count = 0.0, 0.0
    for b in range(B):
        for k in range(K):
            for i in range(S):
                if not mask[b, i]:
                    continue
                window = [min(max(i - r + a, 0), S - 1) for a in range(w)]
                for a in window:
                    for a2 in window:
                        if reduction == "masked_mean" and not (mask[b, a] and mask[b, a2]):
                            continue
                        angle_s = _angle(s[b, k, i], s[b, k, a], s[b, k, a2])
                        total += (angle_s - _angle(t[b, k, i], t[b, k, a], t[b, k, a2])) ** 2
                        count += 1
    if reduction == "gkd":
        count = K * w * w * float(mask.sum())
    return total / max(count, 1.0)


def ref_layer_distance(s, t, mask, reduction="masked_mean"):
    B, K, S, _ = s.shape
    total, count = 0.0, 0.0
    for b in range(B):
        for i in range(S):
            if not mask[b, i]:
                continue
            count += K * K if reduction == "gkd" else K * (K - 1)
            for k in range(K):
                others = [j for j in range(K) if j != k]
                cs = torch.tensor([float(_unit(s[b, k, i]) @ _unit(s[b, j, i])) for j in others], dtype=torch.float64)
                ct = torch.tensor([float(_unit(t[b, k, i]) @ _unit(t[b, j, i])) for j in others], dtype=torch.float64)
                total += _kl_rows(ct, cs)
    return total / max(count, 1.0)


def ref_layer_angle(s, t, mask, reduction="masked_mean"):
    B, K, S, _ = s.shape
    total = 0.0
    for b in range(B):
        for i in range(S):
            if not mask[b, i]:
                continue
            for k in range(K):
                for k1 in range(K):
                    for k2 in range(K):
                        angle_s = _angle(s[b, k, i], s[b, k1, i], s[b, k2, i])
                        total += (angle_s - _angle(t[b, k, i], t[b, k1, i], t[b, k2, i])) ** 2
    return total / max(K**3 * float(mask.sum()), 1.0)


# ---------------------------------------------------------------------------- MGSKD references
def _smooth_l1(a, b):
    d = abs(a - b)
    return 0.5 * d * d if d < 1 else d - 0.5


def ref_pair_and_triplet(s, t, mask, heads, k1, k2):
    """MGSKD token loss parts (pair MSE, triplet smooth-L1) re-derived from spec group 2, §3."""
    B, N, _ = s.shape
    m = mask.double()

    def rel(x):
        d = x.shape[-1] // heads
        out = torch.zeros(B, heads, N, N, dtype=torch.float64)
        for b in range(B):
            for r in range(heads):
                for i in range(N):
                    for j in range(N):
                        xi, xj = x[b, i, r * d : (r + 1) * d].double(), x[b, j, r * d : (r + 1) * d].double()
                        out[b, r, i, j] = m[b, i] * m[b, j] * float(xi @ xj) / math.sqrt(d)
        return out

    ps, pt = rel(s), rel(t)
    pair = float(((ps - pt) ** 2).sum()) / max(heads * float((m.sum(1) ** 2).sum()), 1.0)
    triplet_sum, triplet_count = 0.0, 0
    for b in range(B):
        attn = torch.zeros(heads, N, N, dtype=torch.float64)
        for r in range(heads):
            for i in range(N):
                logits = torch.tensor([pt[b, r, i, j] if m[b, i] * m[b, j] else -1e4 for j in range(N)], dtype=torch.float64)
                attn[r, i] = logits.softmax(0) * m[b, i] * m[b]
        received = attn.sum((0, 1))
        anchors = sorted(range(N), key=lambda j: -float(received[j]))[: min(k1, N)]
        for a in anchors:
            local = attn.sum(0)[a].clone()
            local[a] = 0
            nbrs = sorted(range(N), key=lambda j: -float(local[j]))[: min(k2, N)]
            for q in range(len(nbrs)):
                for q2 in range(len(nbrs)):
                    if q == q2 or not (m[b, a] and m[b, nbrs[q]] and m[b, nbrs[q2]]):
                        continue
                    ts = _angle(s[b, a], s[b, nbrs[q]], s[b, nbrs[q2]])
                    tt = _angle(t[b, a], t[b, nbrs[q]], t[b, nbrs[q2]])
                    ts_kept, tt_kept = (ts if ts != 0 else 0.0), (tt if tt != 0 else 0.0)
                    if ts != 0:
                        triplet_count += 1
                    if ts != 0 or tt != 0:
                        triplet_sum += _smooth_l1(ts_kept, tt_kept)
    return pair, triplet_sum / max(triplet_count, 1)


def ref_sample(s, t, mask, heads):
    rows = [b for b in range(s.shape[0]) if mask[b].any()]

    def pooled(x):
        return {b: (x[b].double() * mask[b, :, None].double()).sum(0) / mask[b].double().sum() for b in rows}

    ps, pt = pooled(s), pooled(t)
    ds, dt = s.shape[-1] // heads, t.shape[-1] // heads
    total = 0.0
    for r in range(heads):
        for i in rows:
            for j in rows:
                for k in rows:
                    psi_s = _angle(ps[i][r * ds : (r + 1) * ds], ps[j][r * ds : (r + 1) * ds], ps[k][r * ds : (r + 1) * ds])
                    psi_t = _angle(pt[i][r * dt : (r + 1) * dt], pt[j][r * dt : (r + 1) * dt], pt[k][r * dt : (r + 1) * dt])
                    total += _smooth_l1(psi_s, psi_t)
    return total / max(heads * len(rows) ** 3, 1)


def ref_span_lengths(length, rate, draws):
    """Spec §3 span lengths from given |N(0,1)| draws."""
    n = len(draws)
    lengths = [math.floor(a / sum(draws) * (length - n)) + 1 for a in draws]
    d = length - sum(lengths)
    return [v + 1 if j >= n - d else v for j, v in enumerate(lengths)]


def ref_span_pool(x, mask, lengths, include_padding):
    spans, span_mask, start = [], [], 0
    for ell in lengths:
        rows, real = [], []
        for b in range(x.shape[0]):
            keep = [p for p in range(start, start + ell) if include_padding or mask[b, p]]
            rows.append(x[b, keep].double().mean(0) if keep else torch.zeros(x.shape[-1], dtype=torch.float64))
            real.append(bool(mask[b, start : start + ell].any()))
        spans.append(torch.stack(rows))
        span_mask.append(real)
        start += ell
    return torch.stack(spans, 1), torch.tensor(span_mask).T


# ---------------------------------------------------------------------------- fixtures
def padded_mask(batch=4, length=9):
    """Rows with 9, 6, 1 and 0 real tokens: full, padded, almost all padding, all padding."""
    mask = torch.zeros(batch, length, dtype=torch.bool)
    for row, real in enumerate([length, 6, 1, 0][:batch]):
        mask[row, :real] = True
    return mask


def stacks(seed=0, batch=4, layers=3, length=9, d_s=6, d_t=8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, layers, length, d_s, generator=g), torch.randn(batch, layers, length, d_t, generator=g)


CKD_LOSSES = {
    "word_distance": (word_relation_distance, ref_word_distance, {}),
    "word_angle": (word_relation_angle, ref_word_angle, {"window_size": 5}),
    "layer_distance": (layer_relation_distance, ref_layer_distance, {}),
    "layer_angle": (layer_relation_angle, ref_layer_angle, {}),
}


# ---------------------------------------------------------------------------- CKD tests
@pytest.mark.parametrize("reduction", ["masked_mean", "gkd"])
@pytest.mark.parametrize("name", list(CKD_LOSSES))
def test_ckd_relation_matches_written_out_formula(name, reduction):
    fn, ref, extra = CKD_LOSSES[name]
    s, t = stacks()
    mask = padded_mask()
    args = list(extra.values())
    got = fn(s, t, mask, *args, reduction=reduction)
    assert got.item() == pytest.approx(ref(s, t, mask, *args, reduction=reduction), rel=1e-4, abs=1e-7)


def test_word_angle_window_wider_than_sequence_and_window_of_one():
    s, t = stacks(seed=1, batch=2, length=4)
    mask = padded_mask(batch=2, length=4)
    assert word_relation_angle(s, t, mask, 21).item() == pytest.approx(ref_word_angle(s, t, mask, 21), rel=1e-4)
    assert word_relation_angle(s, t, mask, 1).item() == 0.0  # only the centre: every angle is 0


def test_ckd_relations_hand_computed():
    """Two real tokens in 2-D, one layer, student vs teacher written out by hand."""
    mask = torch.tensor([[True, True]])
    # Student: tokens at angle 90°, teacher: at 0° (same direction), one layer.
    s = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    t = torch.tensor([[[[1.0, 0.0], [2.0, 0.0]]]])
    # Each token has one other token: the softmax over one entry is 1 in both models → KL 0.
    assert word_relation_distance(s, t, mask).item() == pytest.approx(0.0, abs=1e-7)
    # Window 3 (clamped): token 0 sees positions (0, 0, 1); token 1 sees (0, 1, 1). The only non-zero
    # angle entries are the diff with the other token with itself (cos 1) in both models → loss 0.
    assert word_relation_angle(s, t, mask, 3).item() == pytest.approx(0.0, abs=1e-7)
    # Three real tokens: student (1,0), (0,1), (-1,0); teacher all on a line (1,0),(2,0),(3,0).
    mask3 = torch.tensor([[True, True, True]])
    s3 = torch.tensor([[[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]]])
    t3 = torch.tensor([[[[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]]]])
    # Student cosines: c01=0, c02=-1, c12=0. Teacher: all 1 → uniform rows, P_T = (1/2, 1/2).
    # Row 0: P_S = softmax(0, -1); row 1: softmax(0, 0) = uniform; row 2: softmax(-1, 0).
    p = torch.tensor([0.0, -1.0]).softmax(0)
    kl_row0 = float((0.5 * (math.log(0.5) - p.log())).sum())
    expected = 2 * kl_row0 / (1 * 3 * 2)  # rows 0 and 2 equal; masked mean over 6 off-diagonal pairs
    assert word_relation_distance(s3, t3, mask3).item() == pytest.approx(expected, rel=1e-5)
    assert word_relation_distance(s3, t3, mask3, "gkd").item() == pytest.approx(2 * kl_row0 / 9, rel=1e-5)


@pytest.mark.parametrize("name", list(CKD_LOSSES))
def test_ckd_relation_zero_for_identical_models(name):
    fn, _, extra = CKD_LOSSES[name]
    s, _ = stacks()
    assert fn(s, s.clone(), padded_mask(), *extra.values()).item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("name", list(CKD_LOSSES))
def test_ckd_relation_padding_invariance(name):
    fn, _, extra = CKD_LOSSES[name]
    s, t = stacks()
    mask = padded_mask()
    s2, t2 = s.clone(), t.clone()
    s2[~mask[:, None, :].expand(-1, s.shape[1], -1)] = 123.0
    t2[~mask[:, None, :].expand(-1, t.shape[1], -1)] = -7.0
    before, after = fn(s, t, mask, *extra.values()), fn(s2, t2, mask, *extra.values())
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-7)


def test_word_angle_gkd_reduction_sees_padded_neighbours():
    s, t = stacks()
    mask = padded_mask()
    s2 = s.clone()
    s2[1, :, 7] = 50.0
    assert word_relation_angle(s, t, mask, 5, "gkd") != word_relation_angle(s2, t, mask, 5, "gkd")


@pytest.mark.parametrize("reduction", ["masked_mean", "gkd"])
@pytest.mark.parametrize("name", list(CKD_LOSSES))
def test_ckd_relation_finite_with_heavy_padding(name, reduction):
    fn, _, extra = CKD_LOSSES[name]
    s, t = stacks()
    s.requires_grad_(True)
    mask = padded_mask()
    loss = fn(s, t, mask, *extra.values(), reduction=reduction)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    assert s.grad[3].abs().sum() == 0  # the all-padding row gets no gradient
    only_padding = fn(s, t, torch.zeros_like(mask), *extra.values(), reduction=reduction)
    assert only_padding.item() == 0.0


@pytest.mark.parametrize("name", list(CKD_LOSSES))
def test_ckd_relation_per_sample(name):
    fn, ref, extra = CKD_LOSSES[name]
    s, t = stacks()
    mask = padded_mask()
    per_sample = fn(s, t, mask, *extra.values(), per_sample=True)
    assert per_sample.shape == (4,)
    for b in range(4):
        assert per_sample[b].item() == pytest.approx(
            ref(s[b : b + 1], t[b : b + 1], mask[b : b + 1], *extra.values()), rel=1e-4, abs=1e-7
        )


@pytest.mark.parametrize("name", ["word_angle", "layer_angle"])
def test_angles_robust_to_large_offsets_and_duplicate_vectors(name):
    """Gram-based angles: a shared offset of 1e3 changes nothing; a duplicated vector gives cosine 0."""
    fn, ref, extra = CKD_LOSSES[name]
    s, t = stacks(batch=2)
    mask = padded_mask(batch=2)
    base = fn(s, t, mask, *extra.values())
    torch.testing.assert_close(fn(s + 1e3, t - 1e3, mask, *extra.values()), base, rtol=2e-3, atol=1e-5)
    s_dup = s.clone()
    s_dup[:, :, 2] = s_dup[:, :, 1]  # two equal tokens (word angle)
    s_dup[:, 2] = s_dup[:, 1]  # two equal layers (layer angle)
    assert fn(s_dup, t, mask, *extra.values()).item() == pytest.approx(ref(s_dup, t, mask, *extra.values()), rel=1e-4)


def test_ckd_relation_bad_input():
    s, t = stacks()
    with pytest.raises(ValueError, match="odd"):
        word_relation_angle(s, t, padded_mask(), 4)
    with pytest.raises(ValueError, match="equal B, K, S"):
        word_relation_distance(s, t[:, :2], padded_mask())
    with pytest.raises(ValueError, match="reduction"):
        layer_relation_angle(s, t, padded_mask(), reduction="mean")


# ---------------------------------------------------------------------------- MGSKD tests
def tokens(seed=0, batch=4, length=9, d_s=8, d_t=12):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, length, d_s, generator=g), torch.randn(batch, length, d_t, generator=g)


@pytest.mark.parametrize("k1,k2", [(3, 2), (4, 4), (20, 20)])
def test_token_structure_loss_matches_written_out_formula(k1, k2):
    s, t = tokens()
    mask = padded_mask()
    pair, triplet = token_structure_loss(s, t, mask, heads=2, anchors=k1, neighbours=k2)
    ref_pair, ref_triplet = ref_pair_and_triplet(s, t, mask, 2, k1, k2)
    assert pair.item() == pytest.approx(ref_pair, rel=1e-5)
    assert triplet.item() == pytest.approx(ref_triplet, rel=1e-4)


def test_triplet_anchors_pick_most_attended_teacher_tokens():
    # One head, 4 tokens; token 2 receives by far the most attention, token 3 is padding.
    relations = torch.tensor([[[[0.0, 0.0, 5.0, 9.0], [0.0, 0.0, 5.0, 9.0], [0.0, 1.0, 5.0, 9.0], [0.0, 0.0, 0.0, 0.0]]]])
    mask = torch.tensor([[True, True, True, False]])
    anchors, neighbours = triplet_anchors(relations, mask, anchors=1, neighbours=2)
    assert anchors.tolist() == [[2]]
    # Anchor 2's row: softmax(0, 1, 5) over real keys, its own entry zeroed → neighbours 1 then 0.
    assert neighbours.tolist() == [[[1, 0]]]


def test_sample_structure_loss_matches_written_out_formula():
    s, t = tokens(batch=4)
    mask = padded_mask()  # includes an all-padding row, which is left out
    assert sample_structure_loss(s, t, mask, heads=2).item() == pytest.approx(ref_sample(s, t, mask, 2), rel=1e-5)
    full = torch.ones(3, 9, dtype=torch.bool)
    assert sample_structure_loss(s[:3], t[:3], full, heads=4).item() == pytest.approx(ref_sample(s[:3], t[:3], full, 4), rel=1e-5)


def test_random_span_lengths_follow_the_spec_and_the_seed():
    torch.manual_seed(3)
    lengths = random_span_lengths(30, 0.4)
    torch.manual_seed(3)
    draws = torch.randn(12, dtype=torch.float64).abs().tolist()
    assert lengths == ref_span_lengths(30, 0.4, draws)
    assert len(lengths) == 12 and sum(lengths) == 30 and min(lengths) >= 1
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert random_span_lengths(64, 0.4, g1) == random_span_lengths(64, 0.4, g2)
    assert random_span_lengths(2, 0.4) == []  # ⌊0.8⌋ = 0 spans
    assert random_span_lengths(5, 1.0) == [1] * 5
    for length in range(1, 40):
        spans = random_span_lengths(length, 0.4)
        assert len(spans) == int(length * 0.4) and (not spans or sum(spans) == length)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        random_span_lengths(10, 0.0)


@pytest.mark.parametrize("include_padding", [False, True])
def test_span_pool_matches_written_out_means(include_padding):
    s, _ = tokens()
    mask = padded_mask()
    lengths = [2, 3, 1, 3]
    spans, span_mask = span_pool(s, mask, lengths, include_padding)
    ref_spans, ref_mask = ref_span_pool(s, mask, lengths, include_padding)
    torch.testing.assert_close(spans.double(), ref_spans, rtol=1e-5, atol=1e-6)
    assert span_mask.tolist() == ref_mask.tolist()


def test_structure_losses_zero_for_identical_models_and_padding_invariant():
    s, _ = tokens()
    mask = padded_mask()
    pair, triplet = token_structure_loss(s, s.clone(), mask, 2, 4, 4)
    assert pair.item() == 0.0 and triplet.item() == 0.0
    assert sample_structure_loss(s, s.clone(), mask, 2).item() == 0.0
    s2, t = s.clone(), tokens(seed=1)[1]
    s2[~mask] = 99.0
    t2 = t.clone()
    t2[~mask] = -5.0
    for a, b in zip(token_structure_loss(s, t, mask, 2, 4, 4), token_structure_loss(s2, t2, mask, 2, 4, 4)):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(sample_structure_loss(s, t, mask, 2), sample_structure_loss(s2, t2, mask, 2))


def test_structure_edge_cases_are_finite():
    """Shorter than k1/k2, a single token, a batch of one, all-padding rows."""
    s, t = tokens(batch=4, length=3)
    s.requires_grad_(True)
    mask = padded_mask(length=3)
    pair, triplet = token_structure_loss(s, t, mask, 2, anchors=20, neighbours=20)
    sample = sample_structure_loss(s, t, mask, 2)
    (pair + triplet + sample).backward()
    assert all(torch.isfinite(v) for v in (pair, triplet, sample)) and torch.isfinite(s.grad).all()
    one = tokens(batch=1, length=1)
    ones = torch.ones(1, 1, dtype=torch.bool)
    assert [v.item() for v in token_structure_loss(*one, ones, 2, 20, 20)][1] == 0.0
    assert sample_structure_loss(*one, ones, 2).item() == 0.0  # a batch of one has no triplet
    empty = torch.zeros(4, 3, dtype=torch.bool)
    assert all(v.item() == 0.0 for v in token_structure_loss(s, t, empty, 2, 20, 20))
    assert sample_structure_loss(s, t, empty, 2).item() == 0.0
    with pytest.raises(ValueError, match="divisible"):
        head_relations(s, mask, 5)


def test_pair_and_anchor_parts_are_exposed_consistently():
    s, t = tokens()
    mask = padded_mask()
    rel_t = head_relations(t, mask, 2)
    anchors, neighbours = triplet_anchors(rel_t, mask, 4, 3)
    pair, triplet = token_structure_loss(s, t, mask, 2, 4, 3)
    assert pair == pair_relation_mse(head_relations(s, mask, 2), rel_t, mask)
    assert triplet == anchor_angle_loss(s, t, mask, anchors, neighbours)


def test_relation_math_stays_float32_under_autocast():
    s, t = stacks()
    mask = padded_mask()
    for fn, _, extra in CKD_LOSSES.values():
        plain = fn(s, t, mask, *extra.values())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = fn(s, t, mask, *extra.values())
        torch.testing.assert_close(mixed, plain)
    x, y = tokens()
    plain = token_structure_loss(x, y, mask, 2, 4, 4), sample_structure_loss(x, y, mask, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = token_structure_loss(x, y, mask, 2, 4, 4), sample_structure_loss(x, y, mask, 2)
    torch.testing.assert_close(mixed, plain)

"""ERDistill's token-relation (Gram) and vocabulary-projection terms against loops and hand values."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_kd.losses.token_relation import token_relation_loss, vocabulary_projection_loss


def _gram_mse_loop(s, t, mask=None):
    total, count = 0.0, 0
    for b in range(s.shape[0]):
        keep = [i for i in range(s.shape[1]) if mask is None or mask[b, i]]
        n = len(keep) if mask is not None else s.shape[1]
        for i in keep:
            for j in keep:
                gs, gt = float(s[b, i] @ s[b, j]) / n, float(t[b, i] @ t[b, j]) / n
                total += (gs - gt) ** 2
                count += 1
    return total / count


def _gram_kl_loop(s, t, mask=None):
    total, count = 0.0, 0
    for b in range(s.shape[0]):
        keep = [i for i in range(s.shape[1]) if mask is None or mask[b, i]]
        n = len(keep) if mask is not None else s.shape[1]
        for i in keep:
            zs = torch.tensor([float(s[b, i] @ s[b, j]) / math.sqrt(n) for j in keep], dtype=torch.float64)
            zt = torch.tensor([float(t[b, i] @ t[b, j]) / math.sqrt(n) for j in keep], dtype=torch.float64)
            p, log_q = zt.softmax(0), zs.log_softmax(0)
            total += float((p * (p.log() - log_q)).sum())
            count += 1
    return total / count


def test_gram_hand_computed():
    # N = 2 tokens; student tokens e1, e2 (G = I); teacher tokens e1, e1 (G = all ones).
    s = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    t = torch.tensor([[[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]])  # wider teacher is fine
    # G/N: student [[.5, 0], [0, .5]], teacher all .5 -> squared errors 0, .25, .25, 0 -> mean .125
    assert token_relation_loss(s, t, loss="mse").item() == pytest.approx(0.125)
    # KL rows: teacher uniform; student softmax((1,0)/sqrt2) per row (symmetric)
    a = 1 / math.sqrt(2)
    q1 = math.exp(a) / (math.exp(a) + 1)
    expected = 0.5 * math.log(0.5 / q1) + 0.5 * math.log(0.5 / (1 - q1))
    assert token_relation_loss(s, t, loss="kl").item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("loss", ["mse", "kl"])
def test_gram_matches_loops_with_and_without_mask(loss):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 4, 3, generator=g), torch.randn(2, 4, 5, generator=g)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    loop = _gram_mse_loop if loss == "mse" else _gram_kl_loop
    assert token_relation_loss(s, t, loss=loss).item() == pytest.approx(loop(s, t), rel=1e-5)
    assert token_relation_loss(s, t, mask, loss=loss).item() == pytest.approx(loop(s, t, mask), rel=1e-5)
    # padded positions do not matter when masked
    s2, t2 = s.clone(), t.clone()
    s2[1, 3], t2[0, 3] = 50.0, -7.0
    torch.testing.assert_close(token_relation_loss(s2, t2, mask, loss=loss), token_relation_loss(s, t, mask, loss=loss))
    per = token_relation_loss(s, t, mask, loss=loss, per_sample=True)
    assert per.shape == (2,)


def test_vocabulary_projection_hand_computed_and_loops():
    # One token; student state (1, 0) with embeddings rows (1,0),(0,1) -> P_s = (1, 0)
    s, es = torch.tensor([[[1.0, 0.0]]]), torch.eye(2)
    t, et = torch.tensor([[[2.0]]]), torch.tensor([[1.0], [1.0]])  # P_t = (2, 2)
    assert vocabulary_projection_loss(s, t, es, et, loss="mse").item() == pytest.approx(((1 - 2) ** 2 + (0 - 2) ** 2) / 2)
    q1 = math.e / (math.e + 1)
    expected_kl = 0.5 * math.log(0.5 / q1) + 0.5 * math.log(0.5 / (1 - q1))
    assert vocabulary_projection_loss(s, t, es, et, loss="kl").item() == pytest.approx(expected_kl, rel=1e-5)

    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 6, generator=g)
    es, et = torch.randn(7, 4, generator=g), torch.randn(7, 6, generator=g)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    total, count = 0.0, 0
    for b in range(2):
        for n in range(3):
            if mask[b, n]:
                ps, pt = es @ s[b, n], et @ t[b, n]
                total += float((ps - pt).pow(2).mean())
                count += 1
    assert vocabulary_projection_loss(s, t, es, et, mask, loss="mse").item() == pytest.approx(total / count, rel=1e-5)


def test_vocabulary_mismatch_and_unknown_loss():
    with pytest.raises(ValueError, match="one vocabulary"):
        vocabulary_projection_loss(torch.randn(1, 2, 3), torch.randn(1, 2, 3), torch.randn(5, 3), torch.randn(6, 3))
    with pytest.raises(ValueError, match="'kl' or 'mse'"):
        token_relation_loss(torch.randn(1, 2, 3), torch.randn(1, 2, 3), loss="cos")

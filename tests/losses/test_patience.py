"""PKD's patience distance against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from lightning_kd.losses.patience import patience_distance


def test_normalized_sum_hand_computed():
    # s = (3, 4) -> (0.6, 0.8); t = (1, 0). Squared distance = 0.4^2 + 0.8^2 = 0.8
    s, t = torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0, 0.0]])
    assert patience_distance(s, t).item() == pytest.approx(0.8)
    assert patience_distance(s, t, feature_reduction="mean").item() == pytest.approx(0.4)
    # unnormalised: (2^2 + 4^2) = 20 summed, 10 averaged
    assert patience_distance(s, t, normalize=False).item() == pytest.approx(20.0)
    assert patience_distance(s, t, normalize=False, feature_reduction="mean").item() == pytest.approx(10.0)


def test_unit_vectors_give_two_minus_two_cosine():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    cos = torch.nn.functional.cosine_similarity(s, t, dim=-1)
    torch.testing.assert_close(patience_distance(s, t), (2 - 2 * cos).mean())


def test_token_mask_and_per_sample():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 4, generator=g)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    rows = (torch.nn.functional.normalize(s, dim=-1) - torch.nn.functional.normalize(t, dim=-1)).pow(2).sum(-1)
    expected = (rows[0, 0] + rows[0, 1] + rows[1, 0]) / 3
    torch.testing.assert_close(patience_distance(s, t, mask), expected)
    per = patience_distance(s, t, mask, per_sample=True)
    torch.testing.assert_close(per, torch.stack([(rows[0, 0] + rows[0, 1]) / 2, rows[1, 0]]))
    # changing padded rows changes nothing
    s2 = s.clone()
    s2[1, 2] = 100.0
    torch.testing.assert_close(patience_distance(s2, t, mask), expected)


def test_identical_inputs_give_zero_and_bad_reduction_fails():
    x = torch.randn(3, 4)
    assert patience_distance(x, x).item() == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="feature_reduction"):
        patience_distance(x, x, feature_reduction="max")

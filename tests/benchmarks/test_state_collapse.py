"""The collapse measures: 1 for states that are one vector, 0 for states spread symmetrically around the origin."""

from __future__ import annotations

import torch

from benchmarks.state_collapse import common_share, mean_cosine


def test_common_share_is_one_for_one_vector_and_zero_for_opposite_pairs():
    vector = torch.randn(8)
    same = vector.expand(2, 3, 8).clone()
    opposite = torch.stack([torch.randn(3, 8), torch.zeros(3, 8)])
    opposite[1] = -opposite[0]
    everywhere = torch.ones(2, 3, dtype=torch.bool)
    assert abs(common_share(same, everywhere) - 1.0) < 1e-6
    assert abs(common_share(opposite, everywhere)) < 1e-6


def test_common_share_reads_only_real_tokens():
    states = torch.randn(1, 4, 8)
    states[0, 2:] = 100.0  # padding: ignored
    mask = torch.tensor([[True, True, False, False]])
    assert abs(common_share(states, mask) - common_share(states[:, :2], torch.ones(1, 2, dtype=torch.bool))) < 1e-6


def test_mean_cosine_ignores_each_vector_with_itself():
    assert abs(mean_cosine(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))) < 1e-6
    assert abs(mean_cosine(torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])) - 1.0) < 1e-6


def test_held_out_r2_is_one_for_an_affine_map_and_near_zero_for_noise():
    from benchmarks.aligned_state_fit import held_out_r2

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(400, 6, generator=generator)
    fit = torch.arange(400) % 2 == 0
    exact = x @ torch.randn(6, 3, generator=generator) + 5.0
    assert held_out_r2(x, exact, fit) > 1 - 1e-9
    assert abs(held_out_r2(x, torch.randn(400, 3, generator=generator), fit)) < 0.1

"""Leaderboard statistics: summaries, the paired difference against written-out values, and the
bootstrap verdict (clear gains are 'better', equal rows are 'within noise')."""

from __future__ import annotations

import random

import pytest

from benchmarks.leaderboard_stats import paired_difference, summarize


def _correct(accuracy: float, n: int, seed: int) -> str:
    rng = random.Random(seed)
    return "".join("1" if rng.random() < accuracy else "0" for _ in range(n))


def test_summary_is_mean_and_sample_std():
    summary = summarize([1.0, 2.0, 4.0])
    assert summary.mean == pytest.approx(7 / 3) and summary.n == 3
    assert summary.std == pytest.approx(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) ** 0.5 / 2**0.5)
    assert summarize([5.0]).std == 0.0
    with pytest.raises(ValueError):
        summarize([])


def test_delta_is_the_mean_paired_difference_in_points():
    row = {1: "1110", 2: "1100", 3: "1111"}
    base = {1: "1000", 2: "1100", 3: "0000", 4: "1111"}  # seed 4 has no pair and is left out
    difference = paired_difference(row, base, samples=200)
    assert difference.seeds == 3
    assert difference.delta == pytest.approx(100 * ((3 - 1) + (2 - 2) + (4 - 0)) / 12)
    assert difference.low <= difference.delta <= difference.high


def test_a_clear_gain_is_better_and_equal_rows_are_within_noise():
    n = 1200
    strong = {s: _correct(0.85, n, 10 + s) for s in (1, 2, 3)}
    weak = {s: _correct(0.75, n, 20 + s) for s in (1, 2, 3)}
    same = {s: _correct(0.75, n, 30 + s) for s in (1, 2, 3)}
    assert paired_difference(strong, weak).verdict == "better"
    assert paired_difference(weak, strong).verdict == "worse"
    assert paired_difference(same, weak).verdict == "within noise"
    assert paired_difference(strong, weak).delta == pytest.approx(paired_difference(strong, weak, seed=5).delta)


def test_errors():
    with pytest.raises(ValueError, match="no seed in common"):
        paired_difference({1: "1"}, {2: "1"})
    with pytest.raises(ValueError, match="differ in length"):
        paired_difference({1: "11"}, {1: "1"})

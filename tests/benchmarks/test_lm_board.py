"""The LM board's statistics: the paired perplexity difference and its interval, and the forest panel."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks import lm_board


def _run(mean_losses: list[float], tokens: list[int]) -> dict:
    """A run's stored test blocks: each block's summed next-token loss and its scored tokens."""
    return {"test_block_loss": [m * n for m, n in zip(mean_losses, tokens)], "test_block_tokens": tokens}


def test_the_paired_difference_is_the_token_weighted_perplexity_gap_averaged_over_seeds():
    tokens = [10, 30]
    row = {1: _run([1.0, 2.0], tokens), 2: _run([1.5, 1.5], tokens)}
    base = {1: _run([2.0, 2.0], tokens), 2: _run([2.0, 3.0], tokens), 3: _run([9.0, 9.0], tokens)}  # seed 3 unpaired
    by_hand = np.mean([math.exp((10 * 1.0 + 30 * 2.0) / 40) - math.exp(2.0),
                       math.exp(1.5) - math.exp((10 * 2.0 + 30 * 3.0) / 40)])
    delta, low, high, seeds = lm_board.perplexity_difference(row, base, samples=500)
    assert delta == pytest.approx(by_hand) and seeds == 2
    assert low <= delta <= high <= 0  # no resample of blocks or seeds can favour the baseline here


def test_a_row_equal_to_its_baseline_is_within_noise_at_zero():
    runs = {s: _run(list(np.random.default_rng(s).uniform(1, 3, size=8)), [16] * 8) for s in (1, 2, 3)}
    delta, low, high, _ = lm_board.perplexity_difference(runs, runs, samples=200)
    assert delta == low == high == 0.0
    assert lm_board.perplexity_verdict(-0.5, 0.5) == "within noise"
    assert lm_board.perplexity_verdict(-2.0, -0.1) == "better" and lm_board.perplexity_verdict(0.1, 2.0) == "worse"


def test_the_forest_panel_orders_rows_best_first_and_keeps_a_wrecked_row_off_the_scale():
    tokens = [16] * 8
    rng = np.random.default_rng(0)
    base = {s: _run(list(3.0 + 0.01 * rng.standard_normal(8)), tokens) for s in (1, 2)}
    shifted = lambda shift: {s: _run([x / n + shift for x, n in zip(r["test_block_loss"], tokens)], tokens)  # noqa: E731
                             for s, r in base.items()}
    results = {"base": base, "good": shifted(-0.05), "bad": shifted(0.05), "wrecked": shifted(3.0),
               "one seed": {1: shifted(-0.01)[1]}}
    section = {"title": "t", "rows": [{"name": "base", "baseline": True}, {"name": "bad"}, {"name": "good"},
                                      {"name": "wrecked"}, {"name": "one seed"}, {"name": "not run"}]}
    panel = lm_board.forest_panel(section, {k: {str(s): r for s, r in v.items()} for k, v in results.items()})
    labels = [i.label for i in panel.intervals]
    assert labels == ["good", "one seed (1 seed)", "bad", "wrecked"]
    assert [i.verdict for i in panel.intervals][0] == "better" and panel.intervals[-1].verdict == "worse"
    wrecked = panel.intervals[-1]
    assert panel.limit < wrecked.delta  # drawn at the edge, not stretching the scale
    assert all(abs(i.high) < panel.limit for i in panel.intervals[:-1])

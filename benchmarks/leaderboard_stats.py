"""Statistics of the leaderboard: per-row mean and spread over seeds, and whether a row's difference
from its no-teacher baseline is beyond noise.

The difference Δ is paired: seed ``s`` of a row against seed ``s`` of its baseline (same training
subset, same data order), averaged over the seeds both have. Its 95 % interval comes from a two-level
paired bootstrap that resamples both sources of noise at once: the seeds (with replacement) and the
test examples (with replacement, the same examples for both sides). A Δ whose interval excludes 0 is
called beyond noise; with three seeds and ~1,200 test examples an interval is typically ±1 point.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BOOTSTRAP_SAMPLES = 4000


@dataclass(frozen=True)
class Summary:
    """Mean and sample standard deviation (``ddof=1``; 0 for one value) of a list, and its length."""

    mean: float
    std: float
    n: int


@dataclass(frozen=True)
class Difference:
    """A paired difference in accuracy points with its bootstrap interval.

    Attributes:
        delta: mean over paired seeds of (row − baseline), in points.
        low: 2.5th percentile of the bootstrap.
        high: 97.5th percentile.
        seeds: how many seeds were paired.
    """

    delta: float
    low: float
    high: float
    seeds: int

    @property
    def verdict(self) -> str:
        """``"better"``, ``"worse"`` or ``"within noise"`` (the interval holds 0)."""
        if self.low > 0:
            return "better"
        if self.high < 0:
            return "worse"
        return "within noise"


def summarize(values: list[float]) -> Summary:
    """Mean and spread of ``values`` (e.g. one accuracy per seed)."""
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        raise ValueError("summarize needs at least one value")
    std = float(array.std(ddof=1)) if array.size > 1 else 0.0
    return Summary(float(array.mean()), std, int(array.size))


def paired_difference(row: dict[int, str], baseline: dict[int, str], samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> Difference:
    """Δ accuracy (points) of ``row`` over ``baseline`` with its 95 % two-level bootstrap interval.

    Args:
        row: per seed, the test correctness string (``"1"`` right, ``"0"`` wrong, one per example).
        baseline: the same for the baseline.
        samples: bootstrap resamples.
        seed: the bootstrap's random seed (the interval is reproducible).

    Raises:
        ValueError: no seed in common, or correctness strings of different lengths.
    """
    seeds = sorted(set(row) & set(baseline))
    if not seeds:
        raise ValueError("the row and its baseline have no seed in common")
    ours = np.array([[c == "1" for c in row[s]] for s in seeds], dtype=float)
    theirs = np.array([[c == "1" for c in baseline[s]] for s in seeds], dtype=float)
    if ours.shape != theirs.shape:
        raise ValueError(f"correctness strings differ in length: {ours.shape} vs {theirs.shape}")
    differences = ours - theirs  # (seeds, examples)
    delta = 100.0 * float(differences.mean())
    generator = np.random.default_rng(seed)
    k, n = differences.shape
    picked_seeds = generator.integers(0, k, size=(samples, k))
    totals = np.empty(samples)
    for b in range(samples):
        counts = np.bincount(generator.integers(0, n, size=n), minlength=n)  # examples drawn with replacement
        totals[b] = (differences[picked_seeds[b]] @ counts / n).mean()
    low, high = np.percentile(100.0 * totals, [2.5, 97.5])
    return Difference(delta, float(low), float(high), k)

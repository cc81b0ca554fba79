"""The per-epoch shuffle: deterministic for (seed, epoch), and able to start mid-epoch."""

from __future__ import annotations

from lightning_kd.data.sampling import EpochShuffleSampler


def test_order_depends_on_seed_and_epoch_only() -> None:
    data = list(range(50))
    sampler = EpochShuffleSampler(data, seed=3)
    first = list(sampler)
    assert sorted(first) == data and first == list(EpochShuffleSampler(data, seed=3))
    sampler.set_epoch(1)
    assert list(sampler) != first and list(EpochShuffleSampler(data, seed=4)) != first


def test_resume_skips_once_within_its_epoch() -> None:
    sampler = EpochShuffleSampler(list(range(20)), seed=0)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.resume_at(2, 8)
    assert list(sampler) == full[8:]
    assert list(sampler) == full, "the skip applies to one pass only"
    sampler.resume_at(2, 8)
    sampler.set_epoch(3)
    assert len(list(sampler)) == 20, "a skip saved for another epoch is ignored"

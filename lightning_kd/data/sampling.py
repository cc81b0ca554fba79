"""Training order that depends only on (seed, epoch), and loaders that resume mid-epoch exactly.

A plain ``DataLoader(shuffle=True)`` draws its order from torch's global generator, whose state
after a restart differs from an uninterrupted run (dropout consumed it), and it restarts an epoch
from its first batch. Here:

* :class:`EpochShuffleSampler` permutes with ``seed + epoch`` (Lightning calls ``set_epoch``), the
  same rule as Lightning's ``DistributedSampler``, which replaces it under DDP;
* :class:`ResumableDataLoader` gives Lightning a ``state_dict``: the epoch and the number of
  batches the trainer has taken from it. On ``--ckpt_path`` resume the sampler skips exactly
  those, so a resumed run sees the same batches as one that never stopped (one device; under DDP
  the epoch restarts in the same order).

Why not torchdata's ``StatefulDataLoader``, which Lightning also restores: it is one more dependency
(torchdata) for what these two small classes do with torch and Lightning alone, and our state is
two integers, independent of worker processes, whereas its state records each worker's iterator.
Lightning's own hook (a loader with ``state_dict``/``load_state_dict``) is what we use.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sized
from typing import Any

import torch
from torch.utils.data import DataLoader, RandomSampler


def global_seed(default: int) -> int:
    """Lightning's ``seed_everything`` seed (``PL_GLOBAL_SEED``), else ``default``."""
    return int(os.environ.get("PL_GLOBAL_SEED", default))


class EpochShuffleSampler(RandomSampler):
    """A random permutation per epoch, drawn from ``seed + epoch``.

    Args:
        data_source: the dataset (only its length is used).
        seed: base seed of the permutations.
    """

    def __init__(self, data_source: Sized, seed: int) -> None:
        super().__init__(data_source)
        self.seed, self.epoch = seed, 0
        self._resume: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch`` (Lightning calls this before every epoch)."""
        self.epoch = epoch

    def resume_at(self, epoch: int, samples: int) -> None:
        """Make the next pass over ``epoch`` start after its first ``samples`` indices."""
        self.epoch, self._resume = epoch, (epoch, samples)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.data_source), generator=generator).tolist()
        start = 0
        if self._resume is not None and self._resume[0] == self.epoch:
            start = self._resume[1]
        self._resume = None
        yield from order[start:]


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` whose position Lightning saves in checkpoints and restores on resume.

    Args:
        *args: passed to ``DataLoader``.
        position: returns ``{"epoch": e, "batches": n}``, the batches the trainer has consumed in
            epoch ``e`` (read from the trainer's loop progress, which, unlike a count of fetched
            batches, does not include the batch Lightning prefetches).
        **kwargs: passed to ``DataLoader``.
    """

    def __init__(self, *args: Any, position: Callable[[], dict[str, int]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.position = position
        self._skip_batches = 0

    def state_dict(self) -> dict[str, int]:
        """Where the trainer is in this loader's epoch."""
        return self.position()

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue the saved epoch after its consumed batches.

        With our :class:`EpochShuffleSampler` the sampler starts after them (nothing is loaded).
        Under DDP Lightning swaps in a ``DistributedSampler`` (same order for a given seed and
        epoch on every launch), so the next pass loads and drops the consumed batches instead.
        """
        if isinstance(self.sampler, EpochShuffleSampler) and self.batch_size is not None:
            self.sampler.resume_at(state["epoch"], state["batches"] * self.batch_size)
        else:
            self._skip_batches = state["batches"]

    def __iter__(self):
        iterator = super().__iter__()
        skip, self._skip_batches = self._skip_batches, 0
        for _ in range(skip):
            next(iterator, None)
        return iterator


def fit_position(trainer: Any) -> dict[str, int]:
    """The epoch and the batches started in it, from a Lightning trainer's fit loop (zeros without one)."""
    if trainer is None:
        return {"epoch": 0, "batches": 0}
    loop = trainer.fit_loop
    return {"epoch": loop.epoch_progress.current.processed, "batches": loop.epoch_loop.batch_progress.current.ready}

"""Which batches are generated, and the seed of each generation, as functions of the run and the step.

Like dropout under :mod:`lightning_kd.fault.step_seed`, nothing here is a random stream that a
resumed run would have to restore: a batch is chosen, and its tokens sampled, from a seed derived
from (run seed, purpose, rank, global step, batch index), so a run resumed mid-epoch chooses and
samples exactly what the uninterrupted run did. Only the run seed travels in checkpoints.

* *Choices* (is this batch on-policy? does the teacher write it?) leave the rank out: every process
  makes the same choice at a step, so processes stay in step (a ZeRO-3 generation needs all of them).
* *Sampling* seeds include the rank: each process samples its own batch's continuations.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from lightning_kd.fault.step_seed import batch_seed

_SPAN = float(2**63)


def purpose_seed(run_seed: int, purpose: str) -> int:
    """A run seed of its own for ``purpose``, so its draws are independent of dropout's (which uses the run seed)."""
    digest = hashlib.blake2b(f"lightning_kd.on_policy:{run_seed}:{purpose}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def sampling_seed(run_seed: int, purpose: str, rank: int, step: int, batch_idx: int) -> int:
    """The seed of one process's generation at (``step``, ``batch_idx``)."""
    return batch_seed(purpose_seed(run_seed, purpose), rank, step, batch_idx)


def chosen(run_seed: int, purpose: str, share: float, step: int, batch_idx: int) -> bool:
    """Whether the batch at (``step``, ``batch_idx``) is one of the ``share`` chosen for ``purpose``; the
    same on every process (``share`` 1 chooses every batch, 0 none)."""
    if share >= 1:
        return True
    if share <= 0:
        return False
    return batch_seed(purpose_seed(run_seed, purpose + ":choice"), 0, step, batch_idx) / _SPAN < share


class RunSeed:
    """The seed every choice and sample of a run derives from.

    Bound when ``fit`` starts: ``seed_everything``'s seed (``PL_GLOBAL_SEED``) when set, else drawn once;
    rank 0's value is broadcast, so every process derives from the same one. A resumed run takes the
    checkpoint's (:meth:`load_state_dict`), so a run without ``seed_everything`` resumes its stream too.
    """

    def __init__(self) -> None:
        self.value: int | None = None

    def bind(self, trainer: Any = None) -> int:
        """Set the seed for a run (under ``trainer``: broadcast from rank 0). A resumed run's checkpoint is
        read after this (Lightning restores checkpoints after ``setup``) and replaces it."""
        seed = os.environ.get("PL_GLOBAL_SEED")
        drawn = int(seed) if seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
        strategy = getattr(trainer, "strategy", None)
        self.value = int(strategy.broadcast(drawn)) if strategy is not None else drawn
        return self.value

    def get(self) -> int:
        """The seed, bound on first use outside a trainer."""
        return self.value if self.value is not None else self.bind()

    def state_dict(self) -> dict[str, Any]:
        return {"run_seed": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("run_seed") is not None:
            self.value = int(state["run_seed"])

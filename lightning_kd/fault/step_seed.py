"""Randomness of a training batch as a function of (run seed, rank, step, batch) only.

Lightning checkpoints do not hold RNG states, and even restoring them would not reproduce an
uninterrupted run: a resumed run creates its data-loader iterator (which draws from the global
generator) at a different point of the stream. Reseeding the global generators before every
training batch from a key makes each batch's dropout (and any other global draw in the step) the
same whether the run was interrupted or not, with no RNG state to store.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch


def batch_seed(base_seed: int, rank: int, global_step: int, batch_idx: int) -> int:
    """A 63-bit seed derived from the key; different ranks get different dropout masks."""
    key = f"lightning_kd.step_seed:{base_seed}:{rank}:{global_step}:{batch_idx}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


def seed_global_generators(seed: int) -> None:
    """Seed torch's CPU generator, every CUDA device's (once CUDA is in use), NumPy and ``random``.

    Not ``torch.manual_seed``: without CUDA in use it queues a lazy CUDA seeding and records a stack
    trace for it on every call (~150 µs); this function takes ~10 µs. Other accelerators' (MPS, XPU) generators
    are not reseeded.
    """
    torch.default_generator.manual_seed(seed)
    if torch.cuda.is_initialized():
        torch.cuda.manual_seed_all(seed)  # no device sync: it only sets each generator's seed
    np.random.seed(seed % 2**32)
    random.seed(seed)

"""Helpers shared by the teacher-cache tests: a minimal data module and a teacher-forward counter."""

from __future__ import annotations

from contextlib import contextmanager

import pytorch_lightning as pl
import torch

from tests.conftest import make_batch


def indexed_batches(kind: str = "classification", count: int = 3, size: int = 4, length: int = 12) -> list[dict]:
    """``count`` padded batches (see ``make_batch``) whose rows carry ``example_index`` 0, 1, 2, ..."""
    batches = []
    for number in range(count):
        batch = make_batch(kind, batch=size, length=length, seed=number)
        batch["example_index"] = torch.arange(number * size, (number + 1) * size)
        batches.append(batch)
    return batches


class StubData:
    """The least a teacher cache needs from a data module: a fingerprint, a tokenizer and indexed batches.

    Args:
        batches: the training batches.
        fingerprint: the dataset key component.
        tokenizer: a tokenizer (``None`` leaves the tokenizer out of the key).
    """

    def __init__(self, batches: list[dict], fingerprint: dict | None = None, tokenizer=None) -> None:
        self.batches, self.tokenizer = batches, tokenizer
        self.fingerprint = fingerprint or {"data": "stub", "rows": sum(len(b["input_ids"]) for b in batches)}

    def train_dataloader(self) -> list[dict]:
        return self.batches


@contextmanager
def count_forwards(model: torch.nn.Module):
    """Count ``model``'s forward calls inside the block: yields a one-item list holding the count."""
    calls = [0]

    def hook(*_):
        calls[0] += 1

    handle = model.register_forward_pre_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()


class CountTeacherForwards(pl.Callback):
    """Records, per training epoch, how many forwards teacher 0 ran (for CLI runs)."""

    def __init__(self) -> None:
        self.per_epoch: list[int] = []
        self._handle = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.per_epoch.append(0)
        if self._handle is None:
            self._handle = pl_module.teachers[0].register_forward_pre_hook(self._count)

    def _count(self, *_) -> None:
        self.per_epoch[-1] += 1

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

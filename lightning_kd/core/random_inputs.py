"""Randomised training inputs: distilling on noise tokens (GKD ``--distill_random_data*``).

On the forward passes a step chooses (see ``forward_repeats`` in
:class:`~lightning_kd.core.module.DistillationModule`), the batch's token ids are replaced by random
ones before the student and every teacher run, so both see the *same* random ids and the soft and
intermediate terms still compare like with like. Only ``input_ids`` change: attention masks,
token types and labels are left as they are. Validation never sees random inputs.

Two ways to randomise (``method``):

* ``"shuffle"`` — one random permutation of all token ids of the batch, flattened: tokens move across
  positions *and* sequences, padding and special ids included (the reference's behaviour);
* ``"sample"`` — every token is replaced by a uniform id in ``[0, V)``.

Two ways to use them (``mode``):

* ``"replace"`` — the random ids replace the batch's;
* ``"dual"`` — the random copy is appended to the batch (``B → 2B``), every other tensor duplicated.

The reference computes the hard loss of random inputs against the original labels. We follow the
spec's recommendation instead: in ``"dual"`` mode only the original half feeds the hard loss (the
random half's labels are set to ``-100``, which HF losses ignore), and ``"replace"`` mode refuses a
hard loss when the method is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

IGNORE_INDEX = -100


@dataclass(frozen=True)
class RandomInputs:
    """Which forward passes get random token ids, and how.

    Attributes:
        mode: ``"replace"`` (random ids replace the batch's) or ``"dual"`` (a random copy is appended,
            doubling the batch; only the original half feeds the hard loss).
        method: ``"shuffle"`` (permute all ids of the flattened batch) or ``"sample"`` (uniform ids in ``[0, V)``).
        passes: forward-pass indices that get random ids: 0 is the step's normal pass, ``i`` its
            ``i``-th repeat (``forward_repeats`` must be at least ``max(passes)``).
    """

    mode: Literal["replace", "dual"]
    method: Literal["shuffle", "sample"] = "shuffle"
    passes: list[int] = field(default_factory=lambda: [0])

    def __post_init__(self) -> None:
        if self.mode not in ("replace", "dual"):
            raise ValueError(f"random_inputs.mode must be 'replace' or 'dual', got {self.mode!r}.")
        if self.method not in ("shuffle", "sample"):
            raise ValueError(f"random_inputs.method must be 'shuffle' or 'sample', got {self.method!r}.")
        if not self.passes or any(p < 0 for p in self.passes) or len(set(self.passes)) != len(self.passes):
            raise ValueError(
                f"random_inputs.passes must list distinct forward-pass indices >= 0 (0 = the normal pass), got {self.passes}."
            )


def random_token_ids(input_ids: Tensor, method: Literal["shuffle", "sample"], vocab_size: int) -> Tensor:
    """Random ids shaped like ``input_ids`` (``(B, N)``), drawn from the global torch RNG on its device.

    ``"shuffle"`` permutes the flattened batch; ``"sample"`` draws uniform ids in ``[0, vocab_size)``.
    """
    if method == "shuffle":
        flat = input_ids.reshape(-1)
        return flat[torch.randperm(flat.numel(), device=flat.device)].view_as(input_ids)
    if method == "sample":
        return torch.randint(0, vocab_size, input_ids.shape, device=input_ids.device, dtype=input_ids.dtype)
    raise ValueError(f"Unknown randomisation method {method!r}; use 'shuffle' or 'sample'.")


def randomise_batch(
    batch: dict[str, Tensor], inputs: RandomInputs, vocab_size: int
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Apply ``inputs`` to ``batch``.

    Returns:
        ``(batch, hard_batch)``: the batch every model and loss term sees, and the batch whose labels
        feed the student's own (hard) loss. They differ only in ``"dual"`` mode, where ``hard_batch``
        marks the random half's labels as ignored (``-100``).

    Raises:
        ValueError: ``"dual"`` mode with floating-point labels (regression), which an HF loss cannot ignore.
    """
    random_ids = random_token_ids(batch["input_ids"], inputs.method, vocab_size)
    if inputs.mode == "replace":
        randomised = {**batch, "input_ids": random_ids}
        return randomised, randomised
    size = batch["input_ids"].shape[0]
    doubled = {
        key: torch.cat([value, random_ids if key == "input_ids" else value])
        if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == size
        else value
        for key, value in batch.items()
    }
    labels = doubled.get("labels")
    if labels is None:
        return doubled, doubled
    if labels.is_floating_point():
        raise ValueError(
            "random_inputs mode 'dual' keeps the random half out of the hard loss by marking its labels ignored, "
            "which floating-point (regression) labels cannot express; use mode 'replace' without a hard loss."
        )
    hard_labels = labels.clone()
    hard_labels[size:] = IGNORE_INDEX
    return doubled, {**doubled, "labels": hard_labels}

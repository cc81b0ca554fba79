"""A training batch whose responses a model wrote: prompts plus generated continuations, in the HF convention.

Row ``i`` of the batch is its prompt followed by the continuation up to and including its first EOS
(all of it when no EOS came within ``max_new_tokens``), right-padded. ``labels`` are the continuation's
tokens and ``-100`` on the prompt and on the padding; ``attention_mask`` covers prompt and continuation.
The batch is unprepared (labels unshifted): the method's stage shifts it once as it enters, so the
logits at the prompt's last token score the first generated token, and nothing after the EOS (``generate``
pads finished rows) is read by any term.

:data:`WRITTEN_BY` records who wrote the responses. A response the student wrote has no data label:
the method's own hard term (which fits the student to the labels) is left out of such a batch, as GKD
trains on-policy samples with the divergence alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_kd.on_policy.prompts import Prompts
from lightning_kd.stages import IGNORE_INDEX

#: Batch key naming who wrote the responses of a generated batch: ``"student"`` or ``"teacher"``.
WRITTEN_BY = "written_by"


def student_written(batch: dict) -> bool:
    """Whether the student wrote ``batch``'s responses (on-policy): its tokens are then no targets of their own."""
    return batch.get(WRITTEN_BY) == "student"


def continuation_lengths(continuations: Tensor, eos_ids: Sequence[int]) -> Tensor:
    """``(B,)`` tokens kept of each ``(B, T)`` continuation: up to and including its first EOS, else all ``T``."""
    eos = torch.as_tensor(list(eos_ids), device=continuations.device)
    ended = torch.isin(continuations, eos)
    first = ended.int().argmax(dim=1)
    return torch.where(ended.any(dim=1), first + 1, torch.full_like(first, continuations.shape[1]))


def written_batch(
    prompts: Prompts, continuations: Tensor, kept: Tensor, pad_id: int, *, writer: str,
    extra: dict[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """The HF-convention batch of ``prompts`` continued by the first ``kept`` tokens of ``continuations``.

    Args:
        prompts: the left-padded prompts the continuations follow.
        continuations: ``(B, T)`` the tokens generated after each prompt (``generate``'s output past the prompt).
        kept: ``(B,)`` how many tokens of each continuation make the response (:func:`continuation_lengths`:
            up to and including the first EOS); the rest is never read.
        pad_id: fills the right padding (masked out and unscored, whatever it is).
        writer: ``"student"`` or ``"teacher"`` (:data:`WRITTEN_BY`).
        extra: per-row tensors carried over unchanged (e.g. ``example_index``).

    Returns:
        ``input_ids``, ``attention_mask``, ``labels`` (unshifted), ``WRITTEN_BY`` and ``extra``.
    """
    kept = kept.to(continuations.device)
    lengths = prompts.lengths.to(kept.device) + kept
    rows, width = len(prompts), int(lengths.max())
    device = continuations.device
    ids = torch.full((rows, width), pad_id, dtype=continuations.dtype, device=device)
    labels = torch.full((rows, width), IGNORE_INDEX, dtype=continuations.dtype, device=device)
    for row in range(rows):
        prompt, start, end = prompts.prompt(row).to(device), int(prompts.lengths[row]), int(lengths[row])
        ids[row, :start] = prompt
        ids[row, start:end] = continuations[row, : end - start]
        labels[row, start:end] = continuations[row, : end - start]
    mask = (torch.arange(width, device=device)[None, :] < lengths[:, None]).long()
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, WRITTEN_BY: writer, **(extra or {})}

"""The prompts of a causal-LM training batch, left-padded for ``generate``.

Batches arrive in Hugging Face's causal-LM convention (``labels`` unshifted, ``-100`` where a token
is not scored, right padding with an ``attention_mask``). A row's prompt is everything before its
first scored token: the user turn and the assistant header of a chat example, the prompt text of a
prompt/response pair, the conversation up to the first assistant turn of a multi-turn chat.
``generate`` continues a batch of prompts from their last token, so they are moved to the right
edge (left padding, with a mask), which is where :func:`prompts_of` puts them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_kd.stages import ALIGNED, IGNORE_INDEX


@dataclass(frozen=True)
class Prompts:
    """A batch's prompts, left-padded.

    Attributes:
        ids: ``(B, P)`` token ids, each prompt ending at the right edge; ``pad_id`` before it.
        mask: ``(B, P)`` 1 on prompt tokens, 0 on the left padding.
        lengths: ``(B,)`` prompt lengths.
    """

    ids: Tensor
    mask: Tensor
    lengths: Tensor

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def select(self, rows: Tensor) -> Prompts:
        """The prompts of ``rows`` (indices), with the left padding trimmed to their longest."""
        lengths = self.lengths[rows]
        width = int(lengths.max()) if lengths.numel() else 0
        return Prompts(self.ids[rows, self.ids.shape[1] - width :], self.mask[rows, self.mask.shape[1] - width :], lengths)

    def prompt(self, row: int) -> Tensor:
        """Row ``row``'s prompt ids, unpadded."""
        return self.ids[row, self.ids.shape[1] - int(self.lengths[row]) :]


def prompts_of(batch: dict[str, Tensor], pad_id: int) -> Prompts:
    """The prompts of an unprepared causal-LM batch (labels unshifted), left-padded with ``pad_id``.

    Raises:
        ValueError: the batch's labels are already shifted (prepared), it has no ``labels`` or
            ``attention_mask`` (packed text with separated documents), a row has no scored token, or a
            row is scored from its first token on (no prompt: packed plain text).
    """
    if batch.get(ALIGNED):
        raise ValueError("Prompts are read from a batch as the data module gives it (labels unshifted), not from a prepared one.")
    labels, mask, ids = batch.get("labels"), batch.get("attention_mask"), batch["input_ids"]
    if labels is None or mask is None or labels.shape != ids.shape:
        raise ValueError(
            "Generating continuations needs prompt/response batches with token labels and an attention_mask; "
            "this batch has " + ", ".join(sorted(k for k in batch if isinstance(batch[k], Tensor))) + "."
        )
    scored = labels.ne(IGNORE_INDEX) & mask.bool()
    if not bool(scored.any(dim=1).all()):
        raise ValueError("A row of the batch has no scored (response) token, so its prompt has no end.")
    lengths = scored.int().argmax(dim=1)  # the first scored position = the prompt's length
    if bool((lengths == 0).any()):
        raise ValueError(
            "A row is scored from its first token on, so it has no prompt to continue (packed plain text?): "
            "generated batches need prompt/response or chat examples (data prompt_field/response_field or messages_field)."
        )
    width = int(lengths.max())
    columns = torch.arange(width, device=ids.device)
    # Left padding: column c of row i holds prompt token c - (width - length_i) when that is >= 0.
    source = columns[None, :] - (width - lengths[:, None])
    inside = source >= 0
    gathered = ids.gather(1, source.clamp_min(0))
    return Prompts(gathered.masked_fill(~inside, pad_id), inside.long(), lengths)

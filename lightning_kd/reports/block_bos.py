"""Held-out blocks as a model whose tokenizer opens every text with BOS reads them.

Packed plain-text blocks start wherever the stream was cut, often mid-document and without the BOS that
Llama- and Gemma-style tokenizers put in front of every text (:func:`~lightning_kd.data.lm_examples.template_adds_bos`).
Such models read a sequence without BOS badly — Gemma-3-270M scores 1.72 bits per byte on Rotten Tomatoes blocks
without it against 1.55 with it — so a report that compared it that way would blame the model for the data's
format. :func:`opened_with_bos` puts the BOS in front of every block that does not already start with it (as the
cross-tokenizer teacher encoding does in training), as context only: exactly the tokens scored without it are
scored with it (not BOS, not the block's first token), so bits per byte cover the same text for every model.
Tokenizers without that template get their blocks unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from lightning_kd.data.lm_examples import template_adds_bos
from lightning_kd.stages.base import IGNORE_INDEX


def opened_with_bos(batches: Iterable[dict[str, Tensor]], tokenizer) -> list[dict[str, Tensor]]:
    """``batches`` (unshifted ``labels``, right padding) with every row opening on the tokenizer's BOS when its
    template adds one (each batch then holds ``input_ids``, ``attention_mask`` and ``labels`` only); unchanged
    otherwise, and for batches with ``position_ids`` (documents restarting inside a block, whose positions the
    data module chose)."""
    batches = list(batches)
    if not template_adds_bos(tokenizer):
        return batches
    return [batch if "position_ids" in batch else _opened(batch, tokenizer.bos_token_id) for batch in batches]


def _opened(batch: dict[str, Tensor], bos: int) -> dict[str, Tensor]:
    """One batch's ``input_ids``, ``attention_mask`` and ``labels`` (what scoring reads): rows without a leading BOS
    shift right by one behind it, rows with one gain a masked last column."""
    ids, labels = batch["input_ids"], batch["labels"]
    mask = batch.get("attention_mask", torch.ones_like(ids))
    opens = ids[:, 0] == bos
    if bool(opens.all()):
        return batch
    behind = ~opens.unsqueeze(1)

    def widened(tensor: Tensor, lead: int, tail: int) -> Tensor:
        column = torch.ones_like(tensor[:, :1])
        return torch.where(behind, torch.cat([column * lead, tensor], dim=1), torch.cat([tensor, column * tail], dim=1))

    # BOS is context only: the old first token stays unscored (as without BOS), so exactly the same tokens count.
    unscored_first = labels.clone()
    unscored_first[~opens, 0] = IGNORE_INDEX
    return {"input_ids": widened(ids, bos, bos), "attention_mask": widened(mask, 1, 0),
            "labels": widened(unscored_first, IGNORE_INDEX, IGNORE_INDEX)}

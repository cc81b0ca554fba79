"""Batch assembly: dynamic padding for classification, and MLM masking at batch time for pretraining."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from lightning_kd.data.masking import continuation_table, mask_tokens, word_ids_from_continuations

# Value that fills the padded positions of each model input. Anything else is not padded.
_PAD_VALUES = {"attention_mask": 0, "token_type_ids": 0, "special_tokens_mask": 1}


def pad_rows(rows: Sequence[Sequence[int]], value: int, side: str = "right") -> Tensor:
    """Stack variable-length rows into a ``(len(rows), longest)`` int64 tensor, padding with ``value``."""
    longest = max((len(row) for row in rows), default=0)
    out = torch.full((len(rows), longest), value, dtype=torch.long)
    for index, row in enumerate(rows):
        if len(row):
            if side == "left":
                out[index, longest - len(row):] = torch.as_tensor(row, dtype=torch.long)
            else:
                out[index, : len(row)] = torch.as_tensor(row, dtype=torch.long)
    return out


@dataclass
class PaddingCollator:
    """Turns tokenised rows into a batch dict of tensors, padded to the longest row.

    Padding per batch rather than to ``max_length`` keeps short-text batches small (SST-2 rows are
    ~25 tokens, so padding to 128 would quintuple the work).

    Args:
        pad_token_id: the tokenizer's ``[PAD]`` id.
        padding_side: ``"right"`` (BERT) or ``"left"``.
        label_dtype: ``torch.long`` for classes, ``torch.float32`` for regression scores.
    """

    pad_token_id: int
    padding_side: str = "right"
    label_dtype: torch.dtype = torch.long

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, Tensor]:
        """Pad every input column to the batch's longest row; labels become one tensor."""
        batch: dict[str, Tensor] = {}
        for key in rows[0]:
            values = [row[key] for row in rows]
            if key == "labels":
                batch[key] = torch.tensor(values, dtype=self.label_dtype)
            else:
                value = self.pad_token_id if key == "input_ids" else _PAD_VALUES.get(key, 0)
                batch[key] = pad_rows(values, value, self.padding_side)
        return batch


class MaskingCollator:
    """Pads packed blocks and applies MLM masking when the batch is built.

    Masking at batch time (not once in the cache) gives every epoch fresh masks, as RoBERTa's
    dynamic masking does. Training draws from torch's global generator, which Lightning seeds per
    worker. Evaluation (``eval_seed`` set) draws from a generator seeded by the batch contents, so
    the same validation batch gets the same masks every epoch and losses stay comparable.

    Batches: ``input_ids`` (masked), ``attention_mask``, ``token_type_ids`` (zeros), ``labels``
    (original id at the chosen positions, -100 elsewhere).

    Args:
        tokenizer: supplies ``[MASK]``/``[PAD]``/special ids and the vocabulary.
        probability: chance that a maskable token (or word) is chosen.
        whole_word_mask: choose whole WordPiece words (pieces ``##...`` follow their head).
        eval_seed: makes masks a deterministic function of the batch (for validation/test).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        probability: float = 0.15,
        whole_word_mask: bool = False,
        eval_seed: int | None = None,
    ) -> None:
        if tokenizer.mask_token_id is None:
            raise ValueError("masked-LM pretraining needs a tokenizer with a mask token ([MASK])")
        self.mask_token_id = tokenizer.mask_token_id
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
        vocab = torch.arange(len(tokenizer))
        self.random_token_ids = vocab[~torch.isin(vocab, self.special_ids)]
        if not len(self.random_token_ids):
            raise ValueError(f"the tokenizer's {len(tokenizer)} ids are all special tokens; there is nothing to mask")
        self.is_continuation = continuation_table(tokenizer) if whole_word_mask else None
        self.probability = probability
        self.eval_seed = eval_seed

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, Tensor]:
        """Pad the blocks and mask them (see the class docstring for the keys)."""
        sequences = [row["input_ids"] for row in rows]
        input_ids = pad_rows(sequences, self.pad_token_id)
        lengths = torch.tensor([len(sequence) for sequence in sequences])
        attention_mask = (torch.arange(input_ids.shape[1]) < lengths[:, None]).long()
        special = torch.isin(input_ids, self.special_ids) | ~attention_mask.bool()
        word_ids = None
        if self.is_continuation is not None:
            word_ids = word_ids_from_continuations(input_ids, self.is_continuation)
        masked, labels = mask_tokens(
            input_ids,
            special,
            self.mask_token_id,
            self.random_token_ids,
            self.probability,
            generator=self._generator(input_ids),
            word_ids=word_ids,
        )
        return {
            "input_ids": masked,
            "attention_mask": attention_mask,
            "token_type_ids": torch.zeros_like(input_ids),
            "labels": labels,
        }

    def _generator(self, input_ids: Tensor) -> torch.Generator | None:
        if self.eval_seed is None:
            return None
        digest = zlib.crc32(input_ids.numpy().tobytes())
        return torch.Generator().manual_seed((self.eval_seed * 2**32 + digest) % 2**63)

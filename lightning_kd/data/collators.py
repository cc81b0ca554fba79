"""Batch assembly: dynamic padding for classification, and MLM masking at batch time for pretraining.

Training rows carry their identity: :class:`IndexedRows` adds ``example_index`` (the row's position
in the training split) and the collators turn it into an int64 ``(B,)`` batch key, which the
teacher cache keys its rows by and static masking seeds its per-row masks with. A corpus split with
unlabelled transfer rows also marks each row :data:`~lightning_kd.stages.labelled_rows.LABELLED`
(a bool ``(B,)`` batch key, :func:`row_identity`), from its index alone.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from lightning_kd.data.masking import continuation_table, mask_tokens, word_ids_from_continuations
from lightning_kd.stages.labelled_rows import LABELLED

# Value that fills the padded positions of each model input. Anything else is not padded.
_PAD_VALUES = {"attention_mask": 0, "token_type_ids": 0, "special_tokens_mask": 1}
#: Batch key holding each row's position in the training split (int64, shape ``(B,)``).
EXAMPLE_INDEX = "example_index"


class IndexedRows(Dataset):
    """A map-style dataset whose rows also carry ``example_index``, their position in ``rows``.

    The identity survives shuffling, DDP sharding and resumption, since it is the index the sampler
    drew. Fetches go through ``rows.__getitems__`` when it exists (HF datasets read a batch at once).

    Args:
        rows: the training split (after any ``max_train_samples`` subset).
        labelled: with unlabelled transfer rows, how many leading rows are labelled (the split holds them
            first; :mod:`lightning_kd.data.unlabelled_corpus`): each row then also carries
            :data:`~lightning_kd.stages.labelled_rows.LABELLED`, ``index < labelled``. ``None``: no mark.
    """

    def __init__(self, rows: Any, labelled: int | None = None) -> None:
        self.rows, self.labelled = rows, labelled

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._identified(self.rows[index], index)

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        fetch = getattr(self.rows, "__getitems__", None)
        rows = fetch(indices) if fetch is not None else [self.rows[index] for index in indices]
        return [self._identified(row, index) for row, index in zip(rows, indices)]

    def _identified(self, row: dict[str, Any], index: int) -> dict[str, Any]:
        identity: dict[str, Any] = {EXAMPLE_INDEX: int(index)}
        if self.labelled is not None:
            identity[LABELLED] = int(index) < self.labelled
        return {**row, **identity}


def row_identity(rows: Sequence[dict[str, Any]]) -> dict[str, Tensor]:
    """The batch keys of what :class:`IndexedRows` adds, when the rows carry them: ``example_index`` (int64
    ``(B,)``) and :data:`~lightning_kd.stages.labelled_rows.LABELLED` (bool ``(B,)``)."""
    identity = {}
    if EXAMPLE_INDEX in rows[0]:
        identity[EXAMPLE_INDEX] = torch.tensor([row[EXAMPLE_INDEX] for row in rows], dtype=torch.long)
    if LABELLED in rows[0]:
        identity[LABELLED] = torch.tensor([bool(row[LABELLED]) for row in rows], dtype=torch.bool)
    return identity


def row_seed(masking_seed: int, example_index: int) -> int:
    """A 63-bit generator seed that is a fixed function of ``(masking_seed, example_index)``.

    Hashed rather than added, so neighbouring examples (or seeds) do not get related streams.
    """
    digest = hashlib.blake2b(f"{masking_seed}:{example_index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


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
        teacher_padding: per prefix of a teacher's own encoding (``"teacher_"``), its tokenizer's pad id
            and padding side: its columns are padded as that tokenizer pads (to the longest of its rows).
    """

    pad_token_id: int
    padding_side: str = "right"
    label_dtype: torch.dtype = torch.long
    teacher_padding: dict[str, tuple[int, str]] = field(default_factory=dict)

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, Tensor]:
        """Pad every input column to the batch's longest row; labels and example indices become one tensor each."""
        batch: dict[str, Tensor] = {}
        for key in rows[0]:
            values = [row[key] for row in rows]
            if key == "labels":
                batch[key] = torch.tensor(values, dtype=self.label_dtype)
            elif key == EXAMPLE_INDEX:
                batch[key] = torch.tensor(values, dtype=torch.long)
            else:
                prefix = next((p for p in self.teacher_padding if key.startswith(p)), "")
                pad_id, side = self.teacher_padding.get(prefix, (self.pad_token_id, self.padding_side))
                name = key[len(prefix):]
                value = pad_id if name == "input_ids" else _PAD_VALUES.get(name, 0)
                batch[key] = pad_spans(values, side) if name == "offset_mapping" else pad_rows(values, value, side)
        return batch


def pad_spans(rows: Sequence[Sequence[Sequence[int]]], side: str = "right") -> Tensor:
    """Stack rows of ``(start, end)`` character spans into ``(len(rows), longest, 2)`` int64, padding with
    the empty span ``(0, 0)`` (what tokenizers give special tokens: it covers no character)."""
    longest = max((len(row) for row in rows), default=0)
    out = torch.zeros((len(rows), longest, 2), dtype=torch.long)
    for index, row in enumerate(rows):
        if len(row):
            spans = torch.as_tensor([list(span) for span in row], dtype=torch.long)
            start = longest - len(row) if side == "left" else 0
            out[index, start: start + len(row)] = spans
    return out


class MaskingCollator:
    """Pads packed blocks and applies MLM masking when the batch is built.

    Masking at batch time (not once in the cache) gives every epoch fresh masks, as RoBERTa's
    dynamic masking does. Training draws from torch's global generator, which Lightning seeds per
    worker. Evaluation (``eval_seed`` set) draws from a generator seeded by the batch contents, so
    the same validation batch gets the same masks every epoch and losses stay comparable.

    Static masking (``masking_seed`` set) masks each row on its own with a generator seeded from
    ``(masking_seed, example_index)`` (see :func:`row_seed`): an example gets the same masks in every
    epoch, whatever batch it lands in, which a teacher-output cache needs. Each row then has at
    least one prediction target (the "never an empty loss" rule of :func:`mask_tokens` applies per row).

    Batches: ``input_ids`` (masked), ``attention_mask``, ``token_type_ids`` (zeros), ``labels``
    (original id at the chosen positions, -100 elsewhere), and ``example_index`` / ``labelled`` when the
    rows carry them (:func:`row_identity`). Unlabelled rows are masked like the others: the teacher terms
    read their masked positions.

    Args:
        tokenizer: supplies ``[MASK]``/``[PAD]``/special ids and the vocabulary.
        probability: chance that a maskable token (or word) is chosen.
        whole_word_mask: choose whole WordPiece words (pieces ``##...`` follow their head).
        eval_seed: makes masks a deterministic function of the batch (for validation/test).
        masking_seed: makes each row's masks a deterministic function of ``(masking_seed, example_index)``;
            rows must carry ``example_index`` (:class:`IndexedRows`).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        probability: float = 0.15,
        whole_word_mask: bool = False,
        eval_seed: int | None = None,
        masking_seed: int | None = None,
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
        if eval_seed is not None and masking_seed is not None:
            raise ValueError("give eval_seed (masks from the batch contents) or masking_seed (masks per example), not both")
        self.eval_seed, self.masking_seed = eval_seed, masking_seed

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
        if self.masking_seed is not None:
            masked, labels = self._mask_rows(rows, input_ids, special, word_ids, lengths)
        else:
            masked, labels = mask_tokens(
                input_ids,
                special,
                self.mask_token_id,
                self.random_token_ids,
                self.probability,
                generator=self._generator(input_ids),
                word_ids=word_ids,
            )
        batch = {
            "input_ids": masked,
            "attention_mask": attention_mask,
            "token_type_ids": torch.zeros_like(input_ids),
            "labels": labels,
            **row_identity(rows),
        }
        return batch

    def _mask_rows(
        self, rows: Sequence[dict[str, Any]], input_ids: Tensor, special: Tensor, word_ids: Tensor | None, lengths: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Static masks: each row masked alone, on its unpadded length, by its own seeded generator."""
        if EXAMPLE_INDEX not in rows[0]:
            raise ValueError(
                f"static masking (masking_seed) needs rows that carry {EXAMPLE_INDEX!r}; wrap the training split in IndexedRows"
            )
        masked, labels = input_ids.clone(), torch.full_like(input_ids, -100)
        for row, (example, length) in enumerate(zip((r[EXAMPLE_INDEX] for r in rows), lengths.tolist())):
            generator = torch.Generator().manual_seed(row_seed(self.masking_seed, int(example)))
            row_masked, row_labels = mask_tokens(
                input_ids[row : row + 1, :length],
                special[row : row + 1, :length],
                self.mask_token_id,
                self.random_token_ids,
                self.probability,
                generator=generator,
                word_ids=word_ids[row : row + 1, :length] if word_ids is not None else None,
            )
            masked[row, :length], labels[row, :length] = row_masked[0], row_labels[0]
        return masked, labels

    def _generator(self, input_ids: Tensor) -> torch.Generator | None:
        if self.eval_seed is None:
            return None
        digest = zlib.crc32(input_ids.numpy().tobytes())
        return torch.Generator().manual_seed((self.eval_seed * 2**32 + digest) % 2**63)

"""Packed plain-text blocks that also carry each teacher's own encoding of exactly the same text.

A causal-LM teacher of another family (a Gemma teacher for a SmolLM2 student) cannot read the
student's ids, and its next-token predictions can only be compared with the student's where both
have read the same text (:func:`lightning_kd.cross_tokenizer.alignment.shared_prefix_pairs`). So each
student block of ``block_size`` tokens, cut from ``[BOS] doc [EOS] [BOS] doc [EOS] ...`` as
:class:`~lightning_kd.data.lm_examples.PackDocuments` cuts it, gets next to it the teacher's encoding
of the text those tokens spell:

* **Pieces.** A block covers one or more documents, the first and last possibly in part. Each
  document's piece is its text from the first to the last character its student tokens in the block
  cover; the teacher tokenises that substring (no special tokens).
* **Boundaries.** Where the student's stream opens a document inside the block, the teacher's
  encoding has its own BOS (when its template adds one, :func:`template_adds_bos`), and so does a
  block that opens mid-document (such a teacher reads every sequence from a BOS); where the
  student's EOS closes one, the teacher's EOS.
* **Offsets.** ``offset_mapping`` (student) and ``<prefix>offset_mapping`` (teacher) are ``[start, end)``
  character spans into the block's text, which is its pieces laid end to end in order: a piece starts
  where the previous one ended. Equal end offsets therefore mean "has read the same text". Special
  tokens, and any token that spells no character, have ``(0, 0)``.

The student's ids are the ones :class:`PackDocuments` gives (the same stream code builds them).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from datasets import Features, List, Value
from transformers import PreTrainedTokenizerBase

from lightning_kd.data.lm_examples import OFFSET_MAPPING, PackDocuments, template_adds_bos

_IDS = List(Value("int32"))
_SPANS = List(List(Value("int32"), length=2))
_EMPTY = (0, 0)


@dataclass(frozen=True)
class TeacherEncoder:
    """One teacher's tokenizer as the packer and the collator use it.

    Attributes:
        prefix: the batch-key prefix of its encoding (``"teacher_"``, ``"teacher1_"``).
        tokenizer: its fast tokenizer (part of the ``map`` function's fingerprint, so another teacher re-tokenises).
        eos_id: closes each document where the student's EOS does.
        bos_id: opens each document where the student's stream does, or ``None`` (its template adds none).
        pad_id: pads its rows in a batch (its pad token, else EOS).
    """

    prefix: str
    tokenizer: PreTrainedTokenizerBase
    eos_id: int
    bos_id: int | None
    pad_id: int


def require_fast(tokenizer: PreTrainedTokenizerBase, name: str, role: str) -> None:
    """Refuse a tokenizer without character offsets (a slow, pure-Python one).

    Raises:
        ValueError: ``tokenizer`` is not a fast (Rust ``tokenizers``) tokenizer.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"teacher_tokenizer aligns the {role}'s tokens by character offsets, which only fast tokenizers give, "
            f"but {name!r} loads a slow one ({type(tokenizer).__name__}); give a directory with a tokenizer.json."
        )


def teacher_encoder(prefix: str, tokenizer: PreTrainedTokenizerBase, name: str) -> TeacherEncoder:
    """Check a teacher's tokenizer for packed text and read its special ids.

    Raises:
        ValueError: a slow tokenizer, or one without an EOS token to end documents with.
    """
    require_fast(tokenizer, name, "teacher")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError(
            f"the teacher tokenizer {name!r} has no EOS token to end each document where the student's EOS does; "
            "use the teacher's causal-LM tokenizer (one with an EOS token)."
        )
    bos = tokenizer.bos_token_id if template_adds_bos(tokenizer) else None
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return TeacherEncoder(prefix, tokenizer, eos, bos, pad)


def block_features(teachers: Sequence[TeacherEncoder]) -> Features:
    """Arrow columns of the blocks: int32 ids and ``(start, end)`` spans, the student's and each teacher's."""
    columns = {"input_ids": _IDS, OFFSET_MAPPING: _SPANS}
    for teacher in teachers:
        columns.update({teacher.prefix + "input_ids": _IDS, teacher.prefix + OFFSET_MAPPING: _SPANS})
    return Features(columns)


@dataclass(frozen=True)
class _Piece:
    """Where one document's piece sits in a block: its text's first character there, and its boundaries."""

    shift: int
    opens: bool
    closes: bool


class PackWithTeachers(PackDocuments):
    """``Dataset.map(batched=True)`` function: documents → student blocks plus each teacher's encoding of their text.

    The student side is :class:`PackDocuments`'s (same ids, same dropped tail), plus
    ``offset_mapping``; each teacher adds ``<prefix>input_ids`` (any length) and ``<prefix>offset_mapping``.
    See the module docstring for the pieces, the boundaries and the offsets.

    Args:
        tokenizer: the student's fast tokenizer.
        text_column: the column holding the documents.
        block_size: student tokens per block.
        eos_id: the student's token closing every document.
        bos_id: the student's token opening every document, or ``None``.
        teachers: the teachers' tokenizers (:func:`teacher_encoder`).
    """

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, text_column: str, block_size: int, eos_id: int,
        bos_id: int | None, teachers: Sequence[TeacherEncoder],
    ) -> None:
        super().__init__(tokenizer, text_column, block_size, eos_id, bos_id)
        self.teachers = tuple(teachers)

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        """Tokenise and pack a batch of documents, with every teacher's encoding of each block."""
        texts = self.documents(batch)
        encoded = self.tokenizer(
            texts, add_special_tokens=False, return_offsets_mapping=True, return_attention_mask=False,
            return_token_type_ids=False, verbose=False,
        ) if texts else {"input_ids": [], "offset_mapping": []}
        ids, spans = encoded["input_ids"], encoded["offset_mapping"]
        stream, starts = self.concatenate(ids)
        size, opening = self.block_size, int(self.bos_id is not None)
        out: dict[str, list[Any]] = {"input_ids": [], OFFSET_MAPPING: []}
        pieces: list[str] = []  # every piece's text, so each teacher tokenises them in one call
        layouts: list[list[_Piece]] = []
        for block in range(len(stream) // size):
            low, high = block * size, (block + 1) * size
            offsets: list[tuple[int, int]] = []
            layout: list[_Piece] = []
            shift = 0
            document = bisect_right(starts, low) - 1  # the one holding the block's first token
            while document < len(starts) and starts[document] < high:
                first = starts[document] + opening  # stream position of its first text token
                closing = first + len(ids[document])  # of its EOS
                inside = spans[document][max(low, first) - first : min(high, closing) - first]
                covered = [span for span in inside if span[1] > span[0]]
                begin = min((span[0] for span in covered), default=0)
                end = max((span[1] for span in covered), default=0)
                piece = _Piece(shift, opens=starts[document] >= low, closes=closing < high)
                if piece.opens and opening:
                    offsets.append(_EMPTY)
                offsets.extend((s - begin + shift, e - begin + shift) if e > s else _EMPTY for s, e in inside)
                if piece.closes:
                    offsets.append(_EMPTY)
                pieces.append(texts[document][begin:end])
                layout.append(piece)
                shift += end - begin
                document += 1
            out["input_ids"].append(stream[low:high])
            out[OFFSET_MAPPING].append(offsets)
            layouts.append(layout)
        for teacher in self.teachers:
            out.update(self._teacher_rows(teacher, pieces, layouts))
        return out

    @staticmethod
    def _teacher_rows(teacher: TeacherEncoder, pieces: list[str], layouts: list[list[_Piece]]) -> dict[str, list[Any]]:
        """One teacher's ids and block-text offsets for every block, its BOS/EOS where the student's boundaries are."""
        encoded = teacher.tokenizer(
            pieces, add_special_tokens=False, return_offsets_mapping=True, return_attention_mask=False,
            return_token_type_ids=False, verbose=False,
        ) if pieces else {"input_ids": [], "offset_mapping": []}
        all_ids, all_offsets = [], []
        index = 0
        for layout in layouts:
            ids: list[int] = []
            offsets: list[tuple[int, int]] = []
            for position, piece in enumerate(layout):
                # A teacher whose template opens with BOS also gets it at a block that starts mid-document: models
                # trained with BOS at every sequence start read a sequence without it badly (measured on Gemma-3-270M:
                # 1.72 → 1.55 bits per byte on Rotten Tomatoes blocks). It spells no text, so nothing aligns with it.
                if teacher.bos_id is not None and (piece.opens or position == 0):
                    ids.append(teacher.bos_id)
                    offsets.append(_EMPTY)
                ids.extend(encoded["input_ids"][index])
                offsets.extend(
                    (s + piece.shift, e + piece.shift) if e > s else _EMPTY for s, e in encoded["offset_mapping"][index]
                )
                if piece.closes:
                    ids.append(teacher.eos_id)
                    offsets.append(_EMPTY)
                index += 1
            all_ids.append(ids)
            all_offsets.append(offsets)
        return {teacher.prefix + "input_ids": all_ids, teacher.prefix + OFFSET_MAPPING: all_offsets}

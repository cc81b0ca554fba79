"""Tokenisation of normalised examples with ``Dataset.map`` (cached by ``datasets``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from datasets import Dataset
from transformers import PreTrainedTokenizerBase


class TokenizeExamples:
    """``Dataset.map(batched=True)`` function: ``text_a``/``text_b`` → model inputs, truncated.

    A class (not a closure) so ``datasets`` can fingerprint it for its cache and pickle it: the teachers'
    tokenizers are part of that fingerprint, so a teacher cache keyed on it keys on them too.

    Args:
        tokenizer: a Hugging Face tokenizer.
        max_length: truncate each example (pair included) to this many tokens.
        teachers: ``(prefix, tokenizer)`` of each teacher that reads its own encoding of the same text
            (:mod:`lightning_kd.cross_tokenizer.teacher_tokenizers`): its inputs are stored under the prefix, with
            character offsets (and the student's offsets too), truncated to ``max_length`` of its own tokens.
    """

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, max_length: int, teachers: Sequence[tuple[str, PreTrainedTokenizerBase]] = ()
    ) -> None:
        self.tokenizer, self.max_length, self.teachers = tokenizer, max_length, tuple(teachers)

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        """Tokenise a batch of examples (pairs when ``text_b`` is present)."""
        # truncation=True is "longest_first": a long passage is cut before a short question.
        offsets = bool(self.teachers)  # token ↔ character spans, to align the two encodings
        encoded = dict(self.tokenizer(batch["text_a"], batch.get("text_b"), truncation=True, max_length=self.max_length,
                                      return_offsets_mapping=offsets))
        for prefix, tokenizer in self.teachers:
            own = tokenizer(batch["text_a"], batch.get("text_b"), truncation=True, max_length=self.max_length,
                            return_offsets_mapping=True)
            encoded.update({prefix + key: values for key, values in own.items()})
        return encoded


def tokenize_examples(
    dataset: Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int, teachers: Sequence[tuple[str, PreTrainedTokenizerBase]] = ()
) -> Dataset:
    """Tokenise a normalised dataset; keep the model inputs and rename ``label`` to ``labels``.

    Args:
        teachers: ``(prefix, tokenizer)`` of the teachers that read their own encoding (see :class:`TokenizeExamples`).
    """
    texts = [column for column in ("text_a", "text_b") if column in dataset.column_names]
    tokenized = dataset.map(
        TokenizeExamples(tokenizer, max_length, teachers), batched=True, remove_columns=texts, desc="Tokenizing"
    )
    return tokenized.rename_column("label", "labels")

"""Tokenisation of normalised examples with ``Dataset.map`` (cached by ``datasets``)."""

from __future__ import annotations

from typing import Any

from datasets import Dataset
from transformers import PreTrainedTokenizerBase


class TokenizeExamples:
    """``Dataset.map(batched=True)`` function: ``text_a``/``text_b`` → model inputs, truncated.

    A class (not a closure) so ``datasets`` can fingerprint it for its cache and pickle it.

    Args:
        tokenizer: a Hugging Face tokenizer.
        max_length: truncate each example (pair included) to this many tokens.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int) -> None:
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        """Tokenise a batch of examples (pairs when ``text_b`` is present)."""
        # truncation=True is "longest_first": a long passage is cut before a short question.
        return dict(self.tokenizer(batch["text_a"], batch.get("text_b"), truncation=True, max_length=self.max_length))


def tokenize_examples(dataset: Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int) -> Dataset:
    """Tokenise a normalised dataset; keep the model inputs and rename ``label`` to ``labels``."""
    texts = [column for column in ("text_a", "text_b") if column in dataset.column_names]
    tokenized = dataset.map(
        TokenizeExamples(tokenizer, max_length), batched=True, remove_columns=texts, desc="Tokenizing"
    )
    return tokenized.rename_column("label", "labels")

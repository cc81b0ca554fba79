"""The normalised example every reader produces: ``text_a``, optional ``text_b``, ``label``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datasets import Features

Encode = Callable[[Any], int | float]


def make_example(texts: Sequence[str], label: Any, encode: Encode | None) -> dict[str, Any]:
    """Build one example; ``encode`` turns the raw label into an id/score (``None`` keeps it raw)."""
    example: dict[str, Any] = {"text_a": texts[0]}
    if len(texts) > 1:
        example["text_b"] = texts[1]
    example["label"] = encode(label) if encode is not None else label
    return example


def example_features(pair: bool, regression: bool) -> Features:
    """The Arrow schema of normalised examples (fixed up front so every source agrees)."""
    # Imported here so the task table and readers load without ``datasets`` (see data/__init__.py).
    from datasets import Features, Value

    columns = {"text_a": Value("string")}
    if pair:
        columns["text_b"] = Value("string")
    columns["label"] = Value("float32" if regression else "int64")
    return Features(columns)

"""Turning raw label values (strings, numbers, booleans) into class ids or regression targets.

One rule set serves every source, so a label means the same thing whether it came from a GLUE TSV,
a SuperGLUE JSONL, a user's CSV or a Hugging Face dataset:

* regression (``num_labels == 1``): any number, or a string that parses as one;
* classification: a label name (exact, then case-insensitive), an integer id in ``[0, num_labels)``
  (also written as a string such as ``"1"`` or a whole float such as ``1.0``), or a boolean
  (``False`` = 0, ``True`` = 1).

Errors are plain :class:`ValueError` messages without a location; readers add the file and line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

_INT = re.compile(r"^[+-]?\d+$")


def _as_key(raw: Any) -> int | str:
    """Reduce a raw label to an integer id candidate or a stripped name; reject missing values."""
    if raw is None or (isinstance(raw, float) and raw != raw):  # None or NaN
        raise ValueError("missing label")
    if isinstance(raw, bool):
        return int(raw)
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float):
        if raw.is_integer():
            return int(raw)
        raise ValueError(f"label {raw!r} is not a whole number, so it cannot be a class id")
    text = str(raw).strip()
    if not text:
        raise ValueError("missing label (empty value)")
    return int(text) if _INT.match(text) else text


def label_key(raw: Any) -> int | str:
    """What a raw label is as a class: an integer id candidate or a stripped name (``"1"``, ``1.0``, ``True`` → 1).

    Raises:
        ValueError: a missing label or a fractional number.
    """
    return _as_key(raw)


@dataclass(frozen=True)
class LabelEncoder:
    """Maps raw label values to what the model is trained on.

    Args:
        num_labels: 1 for regression, else the number of classes.
        names: class names in id order (``names[i]`` is class ``i``), or ``None`` for id-only labels.
    """

    num_labels: int
    names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.num_labels < 1:
            raise ValueError(f"num_labels must be >= 1, got {self.num_labels}")
        if self.names is not None and len(self.names) != self.num_labels:
            raise ValueError(f"{len(self.names)} label names {self.names} for {self.num_labels} labels")

    @property
    def is_regression(self) -> bool:
        """Whether labels are real-valued scores (one output) rather than classes."""
        return self.num_labels == 1

    def encode(self, raw: Any) -> int | float:
        """Return the class id (or float score) for one raw label.

        Raises:
            ValueError: the value is missing, out of range, or not a known name.
        """
        if self.is_regression:
            return self._encode_score(raw)
        key = _as_key(raw)
        if isinstance(key, int):
            if 0 <= key < self.num_labels:
                return key
            raise ValueError(f"label id {key} is outside [0, {self.num_labels})")
        if self.names is not None:
            if key in self.names:
                return self.names.index(key)
            lowered = [name.lower() for name in self.names]
            if key.lower() in lowered:
                return lowered.index(key.lower())
        expected = f"one of {list(self.names)} or " if self.names else ""
        raise ValueError(f"label {key!r} is not {expected}an integer id in [0, {self.num_labels})")

    @staticmethod
    def _encode_score(raw: Any) -> float:
        if raw is None or isinstance(raw, bool):
            raise ValueError(f"regression label must be a number, got {raw!r}")
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise ValueError(f"regression label {raw!r} is not a number") from None
        if value != value:
            raise ValueError("missing label (NaN)")
        return value


def infer_label_encoder(raw_labels: Iterable[Any], names: Iterable[str] | None = None) -> LabelEncoder:
    """Build the encoder of a user's classification data from its training labels.

    With ``names`` the classes are exactly those names. Otherwise integer labels are used as ids
    (``num_labels = max + 1``) and string labels are numbered in sorted order, so the mapping does
    not depend on row order. Mixing integer and string labels is an error.

    Raises:
        ValueError: no labels, mixed label kinds, or a label that ``names`` does not contain.
    """
    if names is not None:
        names = tuple(names)
        encoder = LabelEncoder(len(names), names)
        for raw in raw_labels:  # fail early on a training label the names do not cover
            encoder.encode(raw)
        return encoder
    keys = {_as_key(raw) for raw in raw_labels}
    if not keys:
        raise ValueError("the training data has no labels to infer the classes from")
    ints = {key for key in keys if isinstance(key, int)}
    if ints and len(ints) != len(keys):
        raise ValueError(
            f"labels mix integer ids and names ({sorted(map(str, keys))[:10]}); pass label_names to fix the mapping"
        )
    if ints:
        if min(ints) < 0:
            raise ValueError(f"integer label ids must be >= 0, found {min(ints)}")
        return LabelEncoder(max(2, max(ints) + 1))
    if len(keys) < 2:
        raise ValueError(f"the training data has a single label {keys.pop()!r}; classification needs at least two")
    return LabelEncoder(len(keys), tuple(sorted(keys)))

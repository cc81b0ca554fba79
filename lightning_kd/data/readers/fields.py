"""Reading typed fields out of a flat row (a dict), with errors that say which field is wrong."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def text_field(row: Mapping[str, Any], name: str) -> str:
    """Return ``row[name]`` as a string.

    Raises:
        ValueError: the field is absent, null, or not a string.
    """
    value = row.get(name)
    if value is None:
        raise ValueError(f"missing field {name!r}")
    if not isinstance(value, str):
        raise ValueError(f"field {name!r} should be text, found {type(value).__name__} {value!r}")
    return value


def raw_field(row: Mapping[str, Any], name: str) -> Any:
    """Return ``row[name]`` of any type, insisting that it is present and not null."""
    value = row.get(name)
    if value is None:
        raise ValueError(f"missing field {name!r}")
    return value


class TextColumns:
    """Picks one or two text fields from a flat row: the text extractor of plain (sentence-pair) tasks.

    A class rather than a lambda so tasks stay picklable (``datasets`` hashes and ships them to
    worker processes).

    Args:
        names: the field names, in ``text_a``, ``text_b`` order.
    """

    def __init__(self, *names: str) -> None:
        if len(names) not in (1, 2):
            raise ValueError(f"a task reads one or two text fields, got {names}")
        self.names = names

    def __call__(self, row: Mapping[str, Any]) -> tuple[str, ...]:
        """The texts of ``row``, in order."""
        return tuple(text_field(row, name) for name in self.names)

    def __repr__(self) -> str:
        return f"TextColumns{self.names}"

"""Reader for user files: CSV, TSV or JSONL (chosen by extension) with named text and label columns.

CSV and TSV files need a header line and may quote fields (the ``csv`` module's standard dialect,
as pandas writes them). JSON-lines files have one object per line. ``.gz``/``.bz2``/``.xz``
compression is undone on the fly.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from lightning_kd.data.readers.examples import Encode, make_example
from lightning_kd.data.readers.fields import raw_field, text_field
from lightning_kd.data.readers.lines import (
    at_line,
    data_suffix,
    iter_csv_records,
    iter_jsonl,
    located,
    require_file,
)

_DELIMITERS = {".csv": ",", ".tsv": "\t"}
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")
_DEFAULT_TEXT_COLUMNS = (("text_a", "text_b"), ("text_a",), ("text",))


def table_columns(path: str | Path) -> list[str]:
    """The column names of a user file: its header, or the keys of its first JSON object."""
    path = _check(path)
    suffix = data_suffix(path)
    if suffix in _DELIMITERS:
        first = next(iter_csv_records(path, _DELIMITERS[suffix]), None)
        return first[1] if first else []
    first = next(iter_jsonl(path), None)
    return list(first[1]) if first else []


def resolve_text_columns(path: str | Path, text_columns: Sequence[str] | None) -> tuple[str, ...]:
    """Return the text columns to read: the user's, or ``text_a`` [+ ``text_b``], or ``text``.

    Raises:
        ValueError: ``text_columns`` was not given and the file has none of the default names.
    """
    if text_columns is not None:
        return tuple(text_columns)
    return default_text_columns(table_columns(path), str(path))


def default_text_columns(available: Sequence[str], where: str) -> tuple[str, ...]:
    """``text_a`` [+ ``text_b``] or ``text``, whichever ``available`` has.

    Raises:
        ValueError: none of them is there; the message asks for ``text_columns``.
    """
    for candidate in _DEFAULT_TEXT_COLUMNS:
        if all(column in available for column in candidate):
            return candidate
    raise ValueError(
        f"{where}: cannot tell which columns hold the text (found {list(available)}); "
        "pass text_columns=[...] (one column, or two for sentence pairs)"
    )


def iter_table_file(
    path: str | Path, text_columns: Sequence[str], label_column: str, encode: Encode | None
) -> Iterator[dict[str, Any]]:
    """Yield normalised examples from a user file.

    Args:
        path: a ``.csv``, ``.tsv`` or ``.jsonl``/``.json`` (JSON lines) file, possibly compressed.
        text_columns: one or two column names, in ``text_a``, ``text_b`` order.
        label_column: the column holding the label.
        encode: raw label → id/score; ``None`` yields the raw label (used to collect the classes).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a missing column, a short/long row, or a bad label, naming the file and line.
    """
    path = _check(path)
    yield from _examples(path, text_columns, (*text_columns, label_column), lambda row: raw_field(row, label_column), encode)


def iter_unlabelled_table(path: str | Path, text_columns: Sequence[str], label: int) -> Iterator[dict[str, Any]]:
    """Yield normalised examples from a user file of text without labels, each with ``label`` (the
    "no label" value); any other column, a label column included, is ignored.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a missing text column or field, a short/long row, naming the file and line.
    """
    path = _check(path, "Check the unlabelled_file argument.")
    yield from _examples(path, text_columns, tuple(text_columns), lambda row: label, None)


def _examples(
    path: Path, text_columns: Sequence[str], wanted: Sequence[str], label_of: Callable[[Any], Any], encode: Encode | None
) -> Iterator[dict[str, Any]]:
    """The rows of a checked file as normalised examples (``label_of(row)`` gives the raw label), naming the
    line of a bad row, then one warning for the rows with an empty text."""
    suffix = data_suffix(path)
    rows = _delimited_rows(path, _DELIMITERS[suffix], wanted) if suffix in _DELIMITERS else iter_jsonl(path)
    empty: list[int] = []
    for line, row in rows:
        with at_line(path, line):
            texts = [text_field(row, column) for column in text_columns]
            if any(not text.strip() for text in texts):
                empty.append(line)
            yield make_example(texts, label_of(row), encode)
    if empty:
        warn_empty_texts(path, empty)


def warn_empty_texts(path: str | Path, lines: Sequence[int]) -> None:
    """Say that rows of ``path`` have an empty text (they are kept: the model sees only special tokens for them)."""
    shown = ", ".join(map(str, lines[:5])) + (f" and {len(lines) - 5} more" if len(lines) > 5 else "")
    warnings.warn(
        f"{path}: {len(lines)} row(s) have an empty text (line {shown}); they are kept, and the model sees only the "
        "special tokens for them. Remove or fill those rows if they are mistakes.",
        UserWarning,
        stacklevel=2,
    )


def iter_table_labels(path: str | Path, text_columns: Sequence[str], label_column: str) -> Iterator[tuple[int, Any]]:
    """Yield ``(line, raw label)`` for every row of a user file (for the label checks); rows are checked as
    :func:`iter_table_file` checks them.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a missing column or field, a short/long row, or a missing label, naming the file and line.
    """
    path = _check(path)
    suffix = data_suffix(path)
    wanted = (*text_columns, label_column)
    rows = _delimited_rows(path, _DELIMITERS[suffix], wanted) if suffix in _DELIMITERS else iter_jsonl(path)
    for line, row in rows:
        with at_line(path, line):
            for column in text_columns:
                text_field(row, column)
            yield line, raw_field(row, label_column)


def _delimited_rows(path: Path, delimiter: str, wanted: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    records = iter_csv_records(path, delimiter)
    first = next(records, None)
    if first is None:
        raise located(path, 1, "empty file; expected a header line naming the columns")
    header_line, header = first
    missing = [column for column in wanted if column not in header]
    if missing:
        raise located(path, header_line, f"no column(s) {missing} in the header; found {header}")
    for line, fields in records:
        if len(fields) != len(header):
            raise located(path, line, f"expected {len(header)} columns as in the header, found {len(fields)}")
        yield line, dict(zip(header, fields, strict=True))


def _check(path: str | Path, how_to_fix: str = "Check the train_file/validation_file/test_file arguments.") -> Path:
    if data_suffix(path) not in TABLE_SUFFIXES:
        raise ValueError(f"{path}: unsupported file type; use one of {', '.join(TABLE_SUFFIXES)} (optionally .gz/.bz2)")
    return require_file(path, how_to_fix)

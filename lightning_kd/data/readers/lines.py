"""Line-level file access shared by the readers: decompression, numbering, and located errors.

Every reader reports a bad row as ``<path>, line <n>: <problem>`` (1-based physical line numbers),
so a user can open the file at the offending line; bytes that are not UTF-8 are reported the same
way, with how to re-encode the file. Nothing here holds a whole file in memory.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import json
import lzma
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, BinaryIO

# Reviews and passages can exceed csv's default 128 KiB field limit; raise it once, as far as the
# platform allows, instead of failing on long paragraphs (MultiRC, BoolQ passages in CSV exports).
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))

_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


class DataFileError(ValueError):
    """A data file that cannot be used as it is; the message names the file (and the line, when one is to blame).

    Args:
        path: the file.
        line: the 1-based line, or ``None`` for a problem with the whole file.
        problem: what is wrong and how to fix it.
    """

    def __init__(self, path: str | Path, line: int | None, problem: str) -> None:
        super().__init__(f"{path}, line {line}: {problem}" if line is not None else f"{path}: {problem}")
        self.path, self.line, self.problem = Path(path), line, problem


def data_suffix(path: str | Path) -> str:
    """The format suffix of a file, looking through a compression suffix (``a.csv.bz2`` → ``.csv``)."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] in _OPENERS:
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def open_binary(path: str | Path) -> BinaryIO:
    """Open a file's bytes, decompressing ``.gz``/``.bz2``/``.xz`` transparently."""
    opener = _OPENERS.get(Path(path).suffix.lower())
    return opener(path, "rb") if opener is not None else open(path, "rb")


def open_text(path: str | Path) -> IO[str]:
    """Open a UTF-8 text file, decompressing ``.gz``/``.bz2``/``.xz`` transparently.

    ``newline=""`` keeps embedded newlines inside quoted CSV fields intact (the csv module needs it).
    """
    opener = _OPENERS.get(Path(path).suffix.lower())
    if opener is not None:
        return opener(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def located(path: str | Path, line: int, problem: str) -> DataFileError:
    """The error for a malformed row: it names the file and the 1-based line."""
    return DataFileError(path, line, problem)


def first_undecodable(path: str | Path) -> tuple[int, int, bytes] | None:
    """``(line, column, bytes)`` of the first bytes in ``path`` that are not UTF-8 (1-based), or ``None``.

    Decoding happens in blocks, so the error ``open()`` raises gives a position within a block,
    not a line. This reads the raw bytes line by line instead (a newline byte never occurs inside
    a UTF-8 sequence, so every line decodes on its own). Only called once decoding has failed.
    """
    with open_binary(path) as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as error:
                return number, error.start + 1, raw[error.start : error.end]
    return None


def not_utf8(path: str | Path) -> DataFileError:
    """The error for a file that is not UTF-8: the first bad line and byte, and how to re-encode the file."""
    found = first_undecodable(path)
    fix = (
        "re-encode the file as UTF-8, e.g. `iconv -f cp1252 -t utf-8 old.csv > new.csv` if it was saved as "
        "Windows-1252/Latin-1 (as Excel on Windows does)"
    )
    if found is None:  # the codec failed at the very end (a truncated sequence)
        return DataFileError(path, None, f"the file is not valid UTF-8; {fix}")
    line, column, bad = found
    what = f"byte 0x{bad.hex()}" if len(bad) == 1 else f"bytes 0x{bad.hex()}"
    return DataFileError(path, line, f"{what} (byte {column} of the line) is not valid UTF-8; {fix}")


@contextmanager
def utf8_located(path: str | Path) -> Iterator[None]:
    """Re-raise a ``UnicodeDecodeError`` from reading ``path`` as :func:`not_utf8`'s located error."""
    try:
        yield
    except UnicodeDecodeError:
        raise not_utf8(path) from None


@contextmanager
def at_line(path: str | Path, line: int) -> Iterator[None]:
    """Re-raise a ``ValueError`` from row parsing with the file and line prefixed."""
    try:
        yield
    except DataFileError:
        raise  # already located
    except ValueError as error:
        raise located(path, line, str(error)) from None


def require_file(path: str | Path, how_to_fix: str) -> Path:
    """Return ``path`` if it is a file, else raise ``FileNotFoundError`` saying how to provide it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Expected a data file at {path}, but it does not exist. {how_to_fix}")
    return path


def iter_tsv_lines(path: str | Path) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line_number, fields)`` for each non-blank line of an unquoted tab-separated file.

    GLUE files are written without quoting (sentences contain bare ``"`` characters), so a line is
    split on tabs and nothing else, exactly like ``csv.QUOTE_NONE``.
    """
    with open_text(path) as handle, utf8_located(path):
        for number, line in enumerate(handle, start=1):
            line = line.rstrip("\r\n")
            if line.strip():
                yield number, line.split("\t")


def iter_csv_records(path: str | Path, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(first_line_number, fields)`` for each record of a quoted CSV/TSV file.

    A quoted field may span lines, so the number reported is the line where the record starts.
    """
    with open_text(path) as handle, utf8_located(path):
        reader = csv.reader(handle, delimiter=delimiter)
        start = 1
        try:
            for fields in reader:
                if any(field.strip() for field in fields):
                    yield start, fields
                start = reader.line_num + 1
        except csv.Error as error:
            raise located(path, start, f"unreadable CSV record ({error})") from None


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line of a JSON-lines file."""
    with open_text(path) as handle, utf8_located(path):
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise located(path, number, f"invalid JSON ({error.msg} at column {error.colno})") from None
            if not isinstance(record, dict):
                raise located(path, number, f"expected a JSON object, found {type(record).__name__}")
            yield number, record

"""Readers for the standard GLUE (TSV) and SuperGLUE (JSONL) file layouts of a known task."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning_kd.data.readers.examples import Encode, make_example
from lightning_kd.data.readers.layouts import JsonlLayout, TsvLayout
from lightning_kd.data.readers.lines import at_line, iter_jsonl, iter_tsv_lines, located, require_file

if TYPE_CHECKING:  # type only: the task table imports the readers
    from lightning_kd.data.tasks import TaskSpec


def iter_task_file(path: str | Path, spec: TaskSpec, encode: Encode) -> Iterator[dict[str, Any]]:
    """Yield normalised examples from one split file of ``spec``'s standard layout.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: a malformed row, naming the file and line.
    """
    if spec.layout is None or spec.texts is None:
        raise ValueError(f"task {spec.name!r} has no standard file layout; pass text_columns and label_column")
    path = require_file(path, _how_to_fix(spec))
    rows = _tsv_rows(path, spec.layout) if isinstance(spec.layout, TsvLayout) else _jsonl_rows(path, spec.layout)
    for line, row in rows:
        with at_line(path, line):
            yield make_example(spec.texts(row), row.get("label"), encode)


def _tsv_rows(path: Path, layout: TsvLayout) -> Iterator[tuple[int, dict[str, Any]]]:
    """Flat rows of an unquoted GLUE TSV, checked for the exact column count."""
    lines = iter_tsv_lines(path)
    if layout.header:
        first = next(lines, None)
        if first is None:
            raise located(path, 1, "empty file; expected a header line")
        header_line, header = first
        missing = [column for column, _ in layout.columns if column not in header]
        if missing:
            raise located(path, header_line, f"header lacks column(s) {missing}; found {header}")
        width = len(header)
        positions = [(header.index(column), flat) for column, flat in layout.columns]
    else:
        width = layout.num_columns
        positions = [(int(column), flat) for column, flat in layout.columns]
    for line, fields in lines:
        if len(fields) != width:
            what = "as in the header" if layout.header else "(this file has no header)"
            raise located(path, line, f"expected {width} tab-separated columns {what}, found {len(fields)}")
        yield line, {flat: fields[position] for position, flat in positions}


def _jsonl_rows(path: Path, layout: JsonlLayout) -> Iterator[tuple[int, Mapping[str, Any]]]:
    """Flat rows of a SuperGLUE JSONL file (a nested record may give several)."""
    for line, record in iter_jsonl(path):
        with at_line(path, line):
            rows = list(layout.rows(record))  # one record's rows: small, and errors keep their line
        for row in rows:
            yield line, row


def _how_to_fix(spec: TaskSpec) -> str:
    root = "GLUE" if spec.benchmark == "glue" else "SuperGLUE"
    files = sorted({spec.files.train, spec.files.validation}) if spec.files else []
    return (
        f"Task {spec.name!r} reads the standard {root} layout <data_dir>/{spec.directory}/{{{','.join(files)}}}: "
        f"point data_dir at the {root} root, or pass train_file/validation_file, or hf_dataset=."
    )

"""The two standard file layouts of a known task: GLUE TSV and SuperGLUE JSON lines.

They live with the readers that parse them (:mod:`lightning_kd.data.readers.task_files`), so a reader
never imports the task table; :mod:`lightning_kd.data.tasks` names a layout per task.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TsvLayout:
    """An unquoted tab-separated GLUE file.

    Args:
        columns: ``(file column, flat field)`` pairs; the file column is a header name, or a
            0-based index when the file has no header.
        header: whether the first line names the columns.
        num_columns: the exact column count of a header-less file.
    """

    columns: tuple[tuple[str | int, str], ...]
    header: bool = True
    num_columns: int | None = None


@dataclass(frozen=True)
class JsonlLayout:
    """A JSON-lines SuperGLUE file; ``flatten`` turns one record into flat rows (default: itself)."""

    flatten: Callable[[Mapping[str, Any]], Iterator[dict[str, Any]]] | None = None

    def rows(self, record: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
        """The flat rows of one record."""
        return self.flatten(record) if self.flatten is not None else (record,)

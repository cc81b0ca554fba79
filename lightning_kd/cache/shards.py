"""Append-only, memory-mapped record files and their atomically committed indexes.

Layout of one teacher's cache directory::

    manifest.json
    rank0/<run>.tokens.bin          per-token records, appended (numpy structured records, no header)
    rank0/<run>.examples.bin        per-example records (sequence-level logits), when the layout has any
    rank0/<run>.rows.bin            per-logit-row records (compact MLM logits), when the layout has any
    rank0/<run>.00000.index.npy     example index → (token offset, token count, example row, row offset,
                                    row count), one file per commit
    rank1/...

Every process (one per rank and run, ``<run>`` unique) appends to its own files and never touches
another's, so concurrent ranks and runs cannot corrupt each other. A commit flushes the record
files to disk (``fsync``) and only then writes an index file of the rows appended since the
previous commit, atomically (temporary file + ``os.replace``). A crash therefore loses at most the
rows appended since the last commit: their bytes may sit at the end of a record file, but no index
points at them, and readers never map past what an index names. Readers see every committed row
of every rank and run, plus the rows this process appended itself.
"""

from __future__ import annotations

import io
import os
import time
import uuid
from pathlib import Path

import numpy as np

from lightning_kd.fault.atomic_io import atomic_write
from lightning_kd.cache.layout import EncodedRows, RecordLayout

INDEX_DTYPE = np.dtype([("example", "<i8"), ("token_offset", "<i8"), ("tokens", "<i8"), ("example_row", "<i8"),
                        ("row_offset", "<i8"), ("rows", "<i8")])
_LOCATION = np.dtype([("file", "<i8"), ("token_offset", "<i8"), ("tokens", "<i8"), ("example_row", "<i8"),
                      ("row_offset", "<i8"), ("rows", "<i8")])
_ENTRY_FIELDS = ("token_offset", "tokens", "example_row", "row_offset", "rows")


class Shards:
    """The records of one teacher cache directory, for reading and for appending this process's rows.

    Args:
        directory: the teacher's cache directory (holding ``manifest.json``).
        layout: the record layout from the manifest.
        rank: this process's rank; its rows go to ``rank<rank>/``.
    """

    def __init__(self, directory: Path, layout: RecordLayout, rank: int) -> None:
        self.directory, self.layout = directory, layout
        self.folder = directory / f"rank{rank}"
        self.run = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._files: list[Path] = []  # record-file stems, indexed by a location's "file"
        self._maps: dict[int, tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]] = {}
        self._keys = np.zeros(0, dtype=np.int64)
        self._locations = np.zeros(0, dtype=_LOCATION)
        # Rows this process appended since the last refresh: example → location (a dict: batches look up 32 ids).
        self._own: dict[int, tuple[int, ...]] = {}
        self._uncommitted: list[np.ndarray] = []
        self._commits = 0
        self._token_count = self._example_count = self._row_count = 0
        self._handles: tuple | None = None
        self.refresh()

    # ------------------------------------------------------------------ reading
    def refresh(self) -> None:
        """Re-read every committed index (all ranks, all runs), e.g. after another rank committed."""
        keys, locations = [], []
        for path in sorted(self.directory.glob("rank*/*.index.npy")):
            entries = np.load(path)
            stem = path.parent / path.name.split(".")[0]
            located = np.zeros(len(entries), dtype=_LOCATION)
            located["file"] = self._file_id(stem)
            for name in _ENTRY_FIELDS:
                located[name] = entries[name]
            keys.append(entries["example"])
            locations.append(located)
        if keys:
            all_keys = np.concatenate(keys)
            order = np.argsort(all_keys, kind="stable")
            self._keys, self._locations = all_keys[order], np.concatenate(locations)[order]
        if not self._uncommitted:
            self._own.clear()  # every own row is now in an index

    def __len__(self) -> int:
        """Distinct examples readable now."""
        committed = np.unique(self._keys)
        return len(committed) + sum(1 for key in self._own if not _contains(committed, key))

    def locate(self, examples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(found, locations)``: which of ``examples`` are stored, and where (rows of ``found`` only)."""
        locations = np.zeros(len(examples), dtype=_LOCATION)
        found = np.zeros(len(examples), dtype=bool)
        if len(self._keys):
            position = np.searchsorted(self._keys, examples).clip(max=len(self._keys) - 1)
            found = self._keys[position] == examples
            locations[found] = self._locations[position[found]]
        for row in np.flatnonzero(~found):
            own = self._own.get(int(examples[row]))
            if own is not None:
                locations[row] = own
                found[row] = True
        return found, locations

    def read(self, locations: np.ndarray) -> EncodedRows:
        """The records at ``locations`` (from :meth:`locate`), in order."""
        tokens, examples, rows = [], [], []
        for file, offset, count, row, row_offset, row_count in locations.tolist():
            token_map, example_map, row_map = self._mapped(file, offset + count, row + 1, row_offset + row_count)
            tokens.append(token_map[offset : offset + count])
            if example_map is not None:
                examples.append(example_map[row : row + 1])
            if row_map is not None:
                rows.append(row_map[row_offset : row_offset + row_count])
        return EncodedRows(
            tokens=np.concatenate(tokens),
            examples=np.concatenate(examples) if examples else None,
            counts=locations["tokens"].copy(),
            rows=np.concatenate(rows) if rows else None,
            row_counts=locations["rows"].copy() if self.layout.compact else None,
        )

    # ------------------------------------------------------------------ writing
    def append(self, examples: np.ndarray, rows: EncodedRows) -> None:
        """Append the records of ``examples`` (visible to this process at once, durable after :meth:`commit`)."""
        if not len(examples):
            return
        handles = self._open_for_append()
        for handle, records in zip(handles, (rows.tokens, rows.examples, rows.rows)):
            if handle is not None:
                handle.write(records.tobytes())
                # Python's buffer → the OS, so this process's memory maps see the bytes (no fsync yet).
                handle.flush()
        entries = np.zeros(len(examples), dtype=INDEX_DTYPE)
        entries["example"] = examples
        entries["token_offset"] = self._token_count + np.concatenate([[0], np.cumsum(rows.counts)[:-1]])
        entries["tokens"] = rows.counts
        entries["example_row"] = self._example_count + np.arange(len(examples))
        if rows.row_counts is not None:
            entries["row_offset"] = self._row_count + np.concatenate([[0], np.cumsum(rows.row_counts)[:-1]])
            entries["rows"] = rows.row_counts
            self._row_count += int(rows.row_counts.sum())
        self._token_count += int(rows.counts.sum())
        self._example_count += len(examples)
        self._uncommitted.append(entries)
        file = self._file_id(self.folder / self.run)
        for entry in entries.tolist():
            self._own[entry[0]] = (file, *entry[1:])

    def commit(self) -> int:
        """Make the rows appended since the last commit durable and visible to other processes.

        Returns:
            How many rows were committed.
        """
        if not self._uncommitted:
            return 0
        for handle in self._handles or ():
            if handle is not None:
                handle.flush()
                os.fsync(handle.fileno())  # records reach the disk before any index names them
        entries = np.concatenate(self._uncommitted)
        buffer = io.BytesIO()
        np.save(buffer, entries)
        atomic_write(self.folder / f"{self.run}.{self._commits:05d}.index.npy", lambda handle: handle.write(buffer.getvalue()))
        self._commits += 1
        self._uncommitted.clear()
        return len(entries)

    def close(self) -> None:
        """Commit, then close this process's record files."""
        self.commit()
        for handle in self._handles or ():
            if handle is not None:
                handle.close()
        self._handles = None

    # ------------------------------------------------------------------ internals
    def _open_for_append(self) -> tuple:
        if self._handles is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            stem = self.folder / self.run
            self._handles = (
                open(f"{stem}.tokens.bin", "ab"),  # noqa: SIM115 — kept open for the whole run, closed by close()
                open(f"{stem}.examples.bin", "ab") if self.layout.example_dtype is not None else None,  # noqa: SIM115
                open(f"{stem}.rows.bin", "ab") if self.layout.row_dtype is not None else None,  # noqa: SIM115
            )
        return self._handles

    def _file_id(self, stem: Path) -> int:
        if stem not in self._files:
            self._files.append(stem)
        return self._files.index(stem)

    def _mapped(self, file: int, tokens_needed: int, examples_needed: int,
                rows_needed: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Memory maps of a run's record files covering at least the given record counts (re-mapped as files grow)."""
        token_map, example_map, row_map = self._maps.get(file, (None, None, None))
        stale = token_map is None or len(token_map) < tokens_needed
        if self.layout.example_dtype is not None:
            stale = stale or example_map is None or len(example_map) < examples_needed
        if self.layout.row_dtype is not None:
            stale = stale or row_map is None or len(row_map) < rows_needed
        if stale:
            stem = self._files[file]
            token_map = _map(Path(f"{stem}.tokens.bin"), self.layout.token_dtype)
            example_map = _map(Path(f"{stem}.examples.bin"), self.layout.example_dtype) if self.layout.example_dtype else None
            row_map = _map(Path(f"{stem}.rows.bin"), self.layout.row_dtype) if self.layout.row_dtype else None
            self._maps[file] = (token_map, example_map, row_map)
        return token_map, example_map, row_map


def _map(path: Path, dtype: np.dtype) -> np.ndarray:
    """Read-only memory map of the whole records in ``path`` (a torn last record is left out)."""
    count = path.stat().st_size // dtype.itemsize
    if count == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(count,))


def _contains(sorted_keys: np.ndarray, key: int) -> bool:
    position = np.searchsorted(sorted_keys, key)
    return bool(position < len(sorted_keys) and sorted_keys[position] == key)

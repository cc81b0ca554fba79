"""The leaderboard's results file: one entry per finished (task, row, seed), written atomically after
every run so that an interrupted board resumes where it stopped.

An entry records the row's fingerprint (:func:`benchmarks.leaderboard_spec.row_hash`): a result
whose row changed since (another config, share or budget) is stale and runs again. Failed runs are
stored too, with the end of their log, so the board can say why a row is missing; they are retried on
the next run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

SCHEMA = 1


def run_key(task: str, row: str, seed: int | str) -> str:
    """The key of one run: ``task|row|seed``."""
    return f"{task}|{row}|{seed}"


class Results:
    """The results file, loaded in memory; :meth:`put` writes it back at once.

    Args:
        path: the JSON file (created on the first :meth:`put`).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.runs: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            document = json.loads(self.path.read_text())
            if document.get("schema") != SCHEMA:
                raise ValueError(f"{self.path} has schema {document.get('schema')!r}; this runner reads schema {SCHEMA}.")
            self.runs = document.get("runs") or {}

    def done(self, key: str, fingerprint: str) -> bool:
        """Whether ``key`` finished successfully with this fingerprint (so it is skipped)."""
        entry = self.runs.get(key)
        return entry is not None and entry.get("status") == "ok" and entry.get("fingerprint") == fingerprint

    def put(self, key: str, entry: dict[str, Any]) -> None:
        """Store ``entry`` under ``key`` and rewrite the file atomically (temporary file, then rename)."""
        self.runs[key] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        document = {"schema": SCHEMA, "runs": dict(sorted(self.runs.items()))}
        temporary.write_text(json.dumps(document, indent=1, sort_keys=False) + "\n")
        os.replace(temporary, self.path)

    def entries(self, task: str, row: str) -> list[dict[str, Any]]:
        """The stored entries of ``(task, row)``, any status, by seed."""
        prefix = run_key(task, row, "")
        found = [entry for key, entry in self.runs.items() if key.startswith(prefix)]
        return sorted(found, key=lambda e: str(e.get("seed")))

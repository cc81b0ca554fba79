"""The teacher's responses to the training prompts, kept on disk (sequence-level KD's cache).

A directory holds ``manifest.json`` — the key the responses were written under: the teacher's config,
weights and precision (:mod:`lightning_kd.cache.fingerprint`, as the teacher-output cache keys them),
the tokenizer, the training data's fingerprint and the decoding settings — and one folder per process,
``rank<r>/``, of part files ``part-<n>-<pid>.json``, each listing ``{"example", "prompt", "response"}`` rows
(token ids; the response up to and including the teacher's EOS). Every file is written once,
atomically (:func:`~lightning_kd.fault.atomic_io.atomic_write`), and never rewritten or deleted: new
responses wait in memory until :meth:`TeacherResponses.commit` writes them as the next part file.

A directory written under another key is refused, naming what differs; a row whose stored prompt is
not the batch's prompt (the data changed under the same fingerprint) is refused too. Nothing is ever
served that was not computed for exactly this teacher, data and decoding.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lightning_kd.fault.atomic_io import atomic_write

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class StaleResponsesError(ValueError):
    """A response directory was written for another teacher, tokenizer, data or decoding."""


class TeacherResponses:
    """Each training example's teacher response, read from and appended to a directory.

    Args:
        directory: the cache directory (created if missing).
        key: what the responses depend on, as JSON values (see the module docstring).
        rank: this process's rank; its new parts go to ``rank<rank>/``.

    Raises:
        StaleResponsesError: the directory was written under another key, or holds parts without a manifest.
    """

    def __init__(self, directory: str | Path, key: dict[str, Any], rank: int = 0) -> None:
        self.directory, self.rank = Path(directory), rank
        self.key = {"format_version": FORMAT_VERSION, **key}
        manifest = self.directory / MANIFEST
        if manifest.is_file():
            _check_key(json.loads(manifest.read_text())["key"], self.key, self.directory)
        elif self._parts():
            raise StaleResponsesError(
                f"{self.directory} holds teacher responses but no {MANIFEST}, so what they were written for is unknown; "
                "point sequence_kd.path elsewhere."
            )
        else:
            text = json.dumps({"key": self.key}, indent=1, sort_keys=True)
            atomic_write(manifest, lambda handle: handle.write(text.encode()))
        self._stored: dict[int, tuple[list[int], list[int]]] = {}
        self._pending: dict[int, tuple[list[int], list[int]]] = {}
        self.refresh()

    def __len__(self) -> int:
        return len(self._stored) + len(self._pending)

    def _parts(self) -> list[Path]:
        # Rank folders in rank order, parts in write order: the first response written for an example wins.
        folders = sorted(self.directory.glob("rank*/"), key=lambda p: int(p.name[4:]) if p.name[4:].isdigit() else -1)
        return [part for folder in folders for part in sorted(folder.glob("part-*.json"))]

    def refresh(self) -> None:
        """Read the parts every process has committed so far."""
        for part in self._parts():
            for row in json.loads(part.read_text())["rows"]:
                self._stored.setdefault(int(row["example"]), (row["prompt"], row["response"]))

    def get(self, example: int, prompt: list[int]) -> list[int] | None:
        """The response stored for ``example``, or ``None``.

        Raises:
            ValueError: the stored prompt of ``example`` is not ``prompt``.
        """
        found = self._stored.get(example) or self._pending.get(example)
        if found is None:
            return None
        if found[0] != prompt:
            raise ValueError(
                f"The teacher response stored for example {example} in {self.directory} answers another prompt: the training "
                "data changed under the same fingerprint. Point sequence_kd.path elsewhere."
            )
        return found[1]

    def add(self, example: int, prompt: list[int], response: list[int]) -> None:
        """Keep ``response`` for ``example`` (written by the next :meth:`commit`)."""
        if example not in self._stored:
            self._pending.setdefault(example, (prompt, response))

    def commit(self) -> int:
        """Write the pending responses as this process's next part file; returns how many were written."""
        if not self._pending:
            return 0
        folder = self.directory / f"rank{self.rank}"
        number = len(list(folder.glob("part-*.json"))) if folder.is_dir() else 0
        # The process id keeps two runs that share the directory from ever writing the same file name.
        rows = [{"example": example, "prompt": prompt, "response": response}
                for example, (prompt, response) in sorted(self._pending.items())]
        text = json.dumps({"rows": rows})
        atomic_write(folder / f"part-{number:06d}-{os.getpid()}.json", lambda handle: handle.write(text.encode()))
        written = len(self._pending)
        self._stored.update(self._pending)
        self._pending = {}
        return written


def _check_key(stored: dict[str, Any], expected: dict[str, Any], directory: Path) -> None:
    differing = sorted(name for name in set(stored) | set(expected) if stored.get(name) != expected.get(name))
    if differing:
        details = "; ".join(f"{name}: {_difference(stored.get(name), expected.get(name))}" for name in differing)
        raise StaleResponsesError(
            f"The teacher responses in {directory} were written for something else ({details}), so they would be stale. "
            "Point sequence_kd.path elsewhere (or remove that directory yourself)."
        )


def _difference(old: Any, new: Any) -> str:
    """``old → new``; for dicts (the decoding settings, the data's fingerprint) only the entries that differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        return ", ".join(f"{k} {_short(old.get(k))} → {_short(new.get(k))}" for k in keys)
    return f"{_short(old)} → {_short(new)}"


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 40 else text[:18] + "…" + text[-10:]

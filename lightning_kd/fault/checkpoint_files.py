"""Finding checkpoint files: the newest one a run wrote, and which files in a directory are intact.

"Intact" is judged without unpickling: ``torch.save`` writes a zip archive, and a truncated or
overwritten file loses the archive's central directory (stored at its end) or has members that run
past the end of the file. Reading the directory costs a few kilobytes however large the checkpoint.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytorch_lightning as pl


def readable_archive(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a complete ``torch.save`` zip archive (its directory reads and every member fits in the file)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return False
    return bool(members) and all(m.header_offset + m.compress_size <= size for m in members)


def intact_checkpoints(directory: str | os.PathLike, exclude: str | os.PathLike | None = None) -> list[Path]:
    """The ``*.ckpt`` files in ``directory`` that are intact archives, newest (modification time) first."""
    directory = Path(directory)
    excluded = Path(exclude).resolve() if exclude is not None else None
    try:
        candidates = [p for p in directory.glob("*.ckpt") if p.is_file() and p.resolve() != excluded]
    except OSError:
        return []
    return sorted((p for p in candidates if readable_archive(p)), key=_age_key, reverse=True)


def newest_checkpoint(trainer: pl.Trainer) -> Path | None:
    """The newest intact checkpoint file of this run: in any checkpoint callback's directory, or the one it resumed from."""
    candidates: set[Path] = set()
    for callback in getattr(trainer, "checkpoint_callbacks", None) or []:
        for path in (getattr(callback, "last_model_path", ""), getattr(callback, "best_model_path", "")):
            if path:
                candidates.add(Path(path))
        directory = getattr(callback, "dirpath", None)
        if directory and "://" not in str(directory):
            candidates |= set(intact_checkpoints(directory))
    resumed = getattr(trainer, "ckpt_path", None)
    if resumed and "://" not in str(resumed):
        candidates.add(Path(resumed))
    existing = [p for p in candidates if p.is_file() and readable_archive(p)]
    return max(existing, key=_age_key) if existing else None


def _age_key(path: Path) -> tuple[int, bool]:
    # last.ckpt is written right after the periodic file of the same step; prefer it when times tie.
    return path.stat().st_mtime_ns, path.name.startswith("last")

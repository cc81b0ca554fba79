"""Finding checkpoint files: the newest one a run wrote, and which files in a directory are intact.

"Intact" is judged without unpickling: ``torch.save`` writes a zip archive, and a truncated or
overwritten file loses the archive's central directory (stored at its end) or has members that run
past the end of the file. Reading the directory costs a few kilobytes however large the checkpoint.
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pytorch_lightning as pl

_STEP = re.compile(r"(?:^|[-_])step=(\d+)")


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


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """The global step a checkpoint was written at: from its name (``…step=1000…``), else from the file
    (memory-mapped: only the small header is read); ``None`` when neither says."""
    match = _STEP.search(Path(path).stem)
    if match:
        return int(match[1])
    try:
        import torch

        step = torch.load(path, map_location="cpu", mmap=True, weights_only=False).get("global_step")
        return int(step) if step is not None else None
    except Exception:  # only a label in a message
        return None


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


def describe_missing_checkpoint(path: str | os.PathLike) -> str:
    """``--ckpt_path <path>`` names no file: say so, with the checkpoints beside it (newest first) to choose from."""
    path = Path(path)
    text = f"--ckpt_path {path}: no such file."
    directory = path.parent
    if not directory.is_dir():
        return text + f" Its directory {directory} does not exist either; check the path."
    intact = intact_checkpoints(directory)
    if not intact:
        return text + f" There is no checkpoint in {directory}."
    shown = ", ".join(p.name for p in intact[:5]) + (f" and {len(intact) - 5} older" if len(intact) > 5 else "")
    return text + f" Checkpoints in {directory}, newest first: {shown}."

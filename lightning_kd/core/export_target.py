"""Where a student export may go: an export replaces its whole directory, so it may only replace what
lightning_kd itself wrote there.

The rule (also in ``docs/fault_tolerance.md``): an export target must be

* new, or an empty directory, or an earlier lightning_kd export: a directory whose ``distillation.json``
  says ``"library": "lightning_kd"`` and holds nothing but the files that export listed in that
  marker's ``"files"`` (exports written before the list existed: only top-level files with the names
  ``save_pretrained`` and tokenizers write, see :data:`LEGACY_EXPORT_FILES`);
* not one of the run's own directories, nor a directory above one: the trainer's
  ``default_root_dir`` and log directory, each logger's directories and each checkpoint directory.
  A directory *inside* them is fine (the default export is ``<log dir>/student``).
"""

from __future__ import annotations

import fnmatch
import json
import os
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path

#: The marker file every export writes; it names the library and lists the export's files.
MARKER = "distillation.json"
LIBRARY = "lightning_kd"
#: Top-level names an export written before the marker listed its files may hold.
LEGACY_EXPORT_FILES = (
    MARKER, "config.json", "generation_config.json", "model.safetensors", "model-*-of-*.safetensors",
    "model.safetensors.index.json", "pytorch_model*.bin", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt", "*.model",
    "chat_template.jinja", "vocab_map.json",
)


class ExportTargetError(ValueError):
    """An export directory that would lose files, or that cannot be written."""


def files_under(directory: Path) -> list[str]:
    """Every file below ``directory`` as a relative POSIX path, sorted (symlinks count as files, never followed)."""
    found = []
    for root, dirs, files in os.walk(directory, followlinks=False):
        base = Path(root).relative_to(directory)
        found += [(base / name).as_posix() for name in files]
        found += [(base / name).as_posix() for name in dirs if (Path(root) / name).is_symlink()]
    return sorted(found)


def write_file_list(directory: Path) -> None:
    """Record in ``directory``'s marker which files it holds, so a later export knows them for its own."""
    marker = directory / MARKER
    record = json.loads(marker.read_text()) if marker.is_file() else {}
    record = {"library": LIBRARY, **record, "files": [f for f in files_under(directory) if f != MARKER]}
    marker.write_text(json.dumps(record, indent=2, default=str))


def foreign_entries(directory: Path) -> list[str]:
    """Top-level entries of ``directory`` holding something no lightning_kd export wrote (``sub/`` for a folder).

    Empty for an empty directory and for an earlier export; everything when the marker is missing or foreign.
    """
    entries = sorted(directory.iterdir())
    record = _read_marker(directory)
    if record is None:
        return [_shown(e) for e in entries]
    listed = record.get("files")
    if isinstance(listed, list):
        allowed = set(map(str, listed)) | {MARKER}
        return [_shown(e) for e in entries if not _all_listed(directory, e, allowed)]
    # An export from before the marker listed its files: flat, with the names transformers writes.
    return [_shown(e) for e in entries if e.is_dir() or e.is_symlink() or not any(fnmatch.fnmatch(e.name, p) for p in LEGACY_EXPORT_FILES)]


def check_export_target(target: str | os.PathLike, run_directories: Iterable[tuple[str, str | os.PathLike]] = ()) -> Path:
    """Raise :class:`ExportTargetError` unless exporting to ``target`` can only replace an earlier export.

    Args:
        target: the export directory.
        run_directories: ``(what, directory)`` pairs the export must neither be nor contain, e.g.
            ``("checkpoint directory", ".../checkpoints")``.

    Returns:
        ``target``, resolved.
    """
    target = Path(target).resolve()
    for what, directory in run_directories:
        directory = Path(directory).resolve()
        if target == directory or target in directory.parents:
            relation = "is" if target == directory else "holds"
            raise ExportTargetError(
                f"The export directory {target} {relation} this run's {what} {directory}, and an export replaces its "
                f"whole directory. Export to a new directory instead, e.g. {target / 'student'}."
            )
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise ExportTargetError(f"The export directory {target} exists and is not a directory; choose a new or empty directory.")
    if target.is_dir():
        foreign = foreign_entries(target)
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise ExportTargetError(
                f"The export directory {target} holds files lightning_kd did not write ({shown}), and an export replaces "
                "the whole directory. Choose a new or empty directory, or move those files away."
            )
    return target


def check_writable(target: str | os.PathLike) -> None:
    """Raise :class:`ExportTargetError` unless the export can create its files next to ``target``.

    The export writes a staging directory beside ``target`` (creating missing parents), so this creates
    and removes a probe file in the nearest existing directory above ``target``. An existing ``target``
    that is read-only (no write bit, or not writable for this user) is refused too: replacing it would
    silently drop the protection its owner gave it.
    """
    target = Path(target).resolve()
    if target.is_dir():
        mode = stat.S_IMODE(target.stat().st_mode)
        if not mode & 0o222 or not os.access(target, os.W_OK):
            raise ExportTargetError(
                f"Cannot export to {target}: the directory is read-only (mode {mode:o}), and an export would replace it with "
                "a new, writable one. Make it writable (chmod u+w) if that is intended, or choose another export directory."
            )
    place = target.parent
    while not place.exists() and place != place.parent:
        place = place.parent
    if not place.is_dir():
        raise ExportTargetError(f"Cannot export to {target}: {place} is a file, not a directory. Choose another export directory.")
    try:
        descriptor, probe = tempfile.mkstemp(dir=place, prefix=".lightning_kd-write-probe-")
        os.close(descriptor)
        os.unlink(probe)
    except OSError as error:
        raise ExportTargetError(
            f"Cannot export to {target}: {place} is not writable ({error.strerror or error}). Choose a writable export directory."
        ) from error


def _read_marker(directory: Path) -> dict | None:
    try:
        record = json.loads((directory / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("library") == LIBRARY else None


def _all_listed(directory: Path, entry: Path, allowed: set[str]) -> bool:
    """Whether ``entry`` is a listed file, or a real folder that holds only listed files (and at least one)."""
    relative = entry.relative_to(directory).as_posix()
    if entry.is_symlink() or not entry.is_dir():
        return relative in allowed
    inside = files_under(entry)
    return bool(inside) and all(f"{relative}/{name}" in allowed for name in inside)


def _shown(entry: Path) -> str:
    return entry.name + ("/" if entry.is_dir() and not entry.is_symlink() else "")

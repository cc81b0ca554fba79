"""Checkpoint files that are either the old complete file or the new complete file, never a torn one.

Lightning 2.6's ``TorchCheckpointIO`` (``lightning_fabric.utilities.cloud_io._atomic_save``)
serialises the whole checkpoint into memory, then writes it through an fsspec transaction. On a
local disk that transaction writes a file in the *system* temporary directory and ``shutil.move``\\ s
it onto the target when done. That is a rename only when the temporary directory and the
checkpoint directory share a filesystem; on a cluster (local ``/tmp``, checkpoints on NFS/Lustre) the
move falls back to copying into the target in place, and a kill during the copy leaves a truncated
checkpoint. Nothing is fsynced, so a node crash can also leave an empty file behind a completed
rename, a killed run leaves its temporary file in ``/tmp`` forever, and the in-memory buffer costs
host memory as large as the checkpoint (measured: +400 MB peak for a 400 MB checkpoint; ~0 here).

:func:`atomic_write` writes into a temporary file *in the target's directory* (so the final step
is always a same-filesystem rename), fsyncs it, ``os.replace``\\ s it onto the target and fsyncs the
directory. :class:`AtomicCheckpointIO` is Lightning's ``TorchCheckpointIO`` with that write, and
:func:`install_atomic_checkpoint_io` makes it a trainer's checkpoint IO unless the user chose one.

A write that fails (a full disk, an exhausted quota, a permission) raises the ``OSError`` itself, not
the ``RuntimeError: [enforce fail at inline_container.cc:…]`` that ``torch.save`` turns it into, and
:class:`AtomicCheckpointIO` reports it as a :class:`CheckpointWriteError` naming the file, the cause
and the intact checkpoints to resume from (:mod:`lightning_kd.fault.write_errors`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import pytorch_lightning as pl
import torch
from fsspec.implementations.local import LocalFileSystem
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning_fabric.utilities.cloud_io import get_filesystem
from pytorch_lightning.strategies import DeepSpeedStrategy, Strategy

from lightning_kd.fault.checkpoint_files import intact_checkpoints, readable_archive
from lightning_kd.fault.write_errors import CheckpointWriteError, describe_write_failure


class CorruptCheckpointError(ValueError):
    """A checkpoint file that is truncated or corrupt; the message names the intact ones beside it.

    A ``ValueError`` (a bad input, not a bug), so ``lightning-kd`` reports it in one sentence.
    """


#: Suffix of the temporary files :func:`atomic_write` creates (``.<target name>.<random>.incomplete``).
TEMPORARY_SUFFIX = ".incomplete"


def _read_umask() -> int:
    # Reading the umask means setting it; done once at import, not while other threads create files.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def temporary_files(directory: Path, target_name: str | None = None) -> list[Path]:
    """The temporary files :func:`atomic_write` left in ``directory`` (all, or those for ``target_name``)."""
    prefix = f".{target_name}." if target_name else "."
    return sorted(p for p in directory.glob(f"{prefix}*{TEMPORARY_SUFFIX}") if p.is_file())


def remove_stale_temporaries(directory: Path, target_name: str | None = None) -> list[Path]:
    """Delete temporary files a killed writer left in ``directory``; returns what was removed.

    Call it only where no other process is writing the same targets at the same moment (one
    checkpoint writer per directory, which is also what ``ModelCheckpoint`` assumes).
    """
    removed = []
    for path in temporary_files(directory, target_name):
        try:
            path.unlink()
            removed.append(path)
        except FileNotFoundError:  # another cleaner got there first
            pass
    return removed


def atomic_write(target: str | os.PathLike, write: Callable[[IO[bytes]], Any], *, opener: Callable[[int], IO[bytes]] | None = None) -> Path:
    """Create or replace ``target`` with what ``write(handle)`` writes, all or nothing.

    A reader (or a resumed run) sees either the previous complete file or the new complete file:
    the bytes go to a temporary file in the same directory, which is flushed and fsynced, then
    renamed over ``target`` with ``os.replace`` (atomic on POSIX and Windows), and the directory is
    fsynced so the rename survives a crash of the machine. If ``write`` raises, the temporary file
    is removed and ``target`` is untouched. A symlink at ``target`` is replaced, not followed.

    An ``OSError`` raised by the handle inside ``write`` (a full disk) is raised as itself even when
    ``write`` turned it into another exception (``torch.save`` raises a ``RuntimeError`` instead).

    Args:
        target: the file to create or replace; its directory is created if missing.
        write: writes the file's contents to the binary handle it is given.
        opener: turns the temporary file's descriptor into the binary handle (default
            ``os.fdopen(descriptor, "wb")``); tests use it to simulate a full disk.

    Returns:
        ``target`` as a ``Path``.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=TEMPORARY_SUFFIX)
    try:
        with (opener or _open_for_writing)(descriptor) as raw:
            handle = _RecordingWriter(raw)
            try:
                write(handle)
            except OSError:
                raise
            except Exception as error:
                if handle.error is not None:  # the real cause, which the writer wrapped in its own error
                    raise handle.error from error
                raise
            raw.flush()
            os.fsync(raw.fileno())
        # mkstemp creates the file private (0600); give it the permissions a plain open() would.
        os.chmod(temporary, 0o666 & ~_UMASK)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_directory(target.parent)
    return target


def _open_for_writing(descriptor: int) -> IO[bytes]:
    return os.fdopen(descriptor, "wb")


class _RecordingWriter:
    """A binary handle that remembers the ``OSError`` its ``write`` raised (everything else is the handle's)."""

    def __init__(self, handle: IO[bytes]) -> None:
        self._handle = handle
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._handle.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        try:
            self._handle.flush()
        except OSError as error:
            self.error = error
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


def _fsync_directory(directory: Path) -> None:
    """Persist a rename in ``directory`` (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:  # some filesystems refuse fsync on a directory; the rename itself is done
        pass
    finally:
        os.close(descriptor)



class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` whose local writes are atomic and durable (see :func:`atomic_write`).

    ``torch.save`` streams straight into the temporary file, so no in-memory copy of the checkpoint
    is made. The first save into a directory removes the temporary files a previous, killed run
    left there. Remote paths (``s3://`` …) are written by ``TorchCheckpointIO`` unchanged. Loading
    and removal are ``TorchCheckpointIO``'s, so ``ModelCheckpoint``'s ``save_top_k`` clean-up and
    ``save_last`` (a full copy, or ``"link"``: a symlink to the step file) work as usual.

    A write that fails raises :class:`CheckpointWriteError`: the file, the cause (no space left, quota,
    permission) and the intact checkpoints to resume from, newest first; the file being written is left
    as it was (its previous version, if any, intact).
    """

    #: How a temporary file's descriptor becomes the handle ``torch.save`` writes to (see :func:`atomic_write`).
    opener: Callable[[int], IO[bytes]] | None = None

    def __init__(self) -> None:
        super().__init__()
        self._cleaned: set[Path] = set()

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any | None = None) -> None:
        """Write ``checkpoint`` to ``path`` atomically (local paths) or as ``TorchCheckpointIO`` does (remote)."""
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options; give a CheckpointIO that uses them.")
        if not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(checkpoint, path)
            return
        target = Path(path)
        directory = target.parent.resolve()
        try:
            if directory not in self._cleaned:
                remove_stale_temporaries(directory)
                self._cleaned.add(directory)
            atomic_write(target, lambda handle: torch.save(checkpoint, handle), opener=self.opener)
        except OSError as error:
            raise CheckpointWriteError(describe_write_failure(target, error), error) from error

    def load_checkpoint(self, path: str | os.PathLike, map_location: Any = lambda storage, loc: storage, weights_only: bool | None = None) -> dict[str, Any]:
        """``TorchCheckpointIO.load_checkpoint``; a truncated or corrupt local file raises :class:`CorruptCheckpointError`
        naming the intact checkpoints in the same directory instead of torch's zip-reader error."""
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        except FileNotFoundError:
            raise
        except Exception as error:
            # Only a file that is not a complete archive is called corrupt; other load errors (an
            # unpickling restriction, a missing class) pass through unchanged.
            if isinstance(get_filesystem(path), LocalFileSystem) and Path(path).is_file() and not readable_archive(path):
                raise CorruptCheckpointError(describe_corrupt_checkpoint(path)) from error
            raise


def describe_corrupt_checkpoint(path: str | os.PathLike) -> str:
    """One or two sentences: ``path`` is unreadable, the intact checkpoints beside it (newest first) and how to resume."""
    path = Path(path)
    intact = intact_checkpoints(path.parent, exclude=path)
    text = f"Checkpoint {path} is truncated or corrupt (not a complete torch.save archive), probably from a write that was cut off."
    if not intact:
        return text + f" No intact checkpoint is left in {path.parent}; start the run again without --ckpt_path."
    shown = ", ".join(p.name for p in intact[:5]) + (f" and {len(intact) - 5} older" if len(intact) > 5 else "")
    return text + f" Intact checkpoints in {path.parent}, newest first: {shown}; use one instead, e.g. --ckpt_path {intact[0]}"


def install_atomic_checkpoint_io(trainer: pl.Trainer) -> bool:
    """Make :class:`AtomicCheckpointIO` the trainer's checkpoint IO unless someone chose one.

    Left alone: a checkpoint IO given in ``trainer.plugins`` or to the strategy (the user's choice
    wins, e.g. ``plugins: lightning_fabric.plugins.TorchCheckpointIO`` to opt out), DeepSpeed,
    which writes its own checkpoint directories without a checkpoint IO, and strategies whose
    default IO is not ``TorchCheckpointIO`` (XLA).

    Returns:
        whether the atomic IO was installed.
    """
    strategy = trainer.strategy
    if isinstance(strategy, DeepSpeedStrategy) or type(strategy).checkpoint_io is not Strategy.checkpoint_io:
        return False
    # ``_checkpoint_io`` stays None until someone sets one; the public property would create the default.
    if getattr(strategy, "_checkpoint_io", None) is not None:
        return False
    strategy.checkpoint_io = AtomicCheckpointIO()
    return True

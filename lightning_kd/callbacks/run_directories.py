"""A fit holds its directories: one run at a time in each, and a refused run leaves no empty folders behind."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl

from lightning_kd.callbacks.export_student import ExportStudent
from lightning_kd.fault.run_lock import DirectoryInUseError, lock_directory, release


class RunDirectories(pl.Callback):
    """Lock the run's ``default_root_dir`` and export directory for the fit; tidy up after a refused fit.

    * At the start of ``fit`` (``setup``, on global rank zero, before any other callback writes there) it
      takes the lock of ``trainer.default_root_dir`` and of the ``ExportStudent`` target
      (:mod:`lightning_kd.fault.run_lock`). A second run into either is refused, on every rank, with the
      holder's process id, host, start time and command. The locks are released when the fit ends.
    * If the fit stops before its first optimizer step (a refused export directory, a failed check,
      a locked directory), the directories it created and left empty (``lightning_logs/version_<n>``,
      a new ``default_root_dir``) are removed again. Nothing that holds a file is removed.

    ``lightning-kd`` runs always have it (first in ``trainer.callbacks``), and call :meth:`remember_missing`
    just before ``fit``.

    Args:
        lock: set to ``False`` to let several runs share directories (at your own risk).
    """

    def __init__(self, lock: bool = True) -> None:
        self.lock = lock
        self._locks: list[Path | None] = []
        self._created: list[Path] = []
        self._remembered = False

    def remember_missing(self, trainer: pl.Trainer) -> None:
        """Note which of the run's directories do not exist yet (call before ``fit``: Lightning creates a logger's
        ``version_<n>`` folder before any callback's ``setup``). Collective (``trainer.log_dir``): every rank."""
        places = self._places(trainer)
        target = self._export_target(trainer)
        if target is not None and "://" not in str(target):
            places.append(target.resolve().parent)  # its lock file goes beside it
        self._created = sorted({d for place in places for d in _missing_ancestors(place)}, key=lambda p: len(p.parts), reverse=True)
        self._remembered = True

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not self._remembered:  # not told before fit (a Trainer built by hand): what is missing now
            self.remember_missing(trainer)
        self._remembered = False
        target = self._export_target(trainer)
        problem = None
        if self.lock and trainer.is_global_zero:
            try:
                root = str(trainer.default_root_dir)
                if "://" not in root:  # a remote root (s3://…) is not locked
                    self._locks.append(lock_directory(root, "default_root_dir", "give this run its own --trainer.default_root_dir"))
                if target is not None and "://" not in str(target):
                    self._locks.append(_lock_export(target))
            except DirectoryInUseError as error:
                problem = str(error)
        # Every rank stops together; one that raised alone would leave the others waiting in a collective.
        problem = trainer.strategy.broadcast(problem)
        if problem is not None:
            raise DirectoryInUseError(problem)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._release()
        if trainer.global_step == 0 and trainer.is_global_zero:
            for directory in self._created:  # deepest first
                try:
                    directory.rmdir()  # only an empty directory goes
                except OSError:
                    pass
        self._created = []

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._release()

    def _release(self) -> None:
        for path in self._locks:
            release(path)
        self._locks = []

    @staticmethod
    def _export_target(trainer: pl.Trainer) -> Path | None:
        """Where ``ExportStudent`` will write (collective: ``trainer.log_dir``), or ``None`` without an export."""
        export = next((c for c in trainer.callbacks if isinstance(c, ExportStudent) and c.enabled), None)
        return export.target(trainer) if export is not None else None

    @staticmethod
    def _places(trainer: pl.Trainer) -> list[Path]:
        found = [trainer.default_root_dir, trainer.log_dir]
        for logger in trainer.loggers:
            found += [getattr(logger, "save_dir", None), getattr(logger, "log_dir", None)]
        return [Path(p).resolve() for p in found if p and "://" not in str(p)]


def _lock_export(target: Path) -> Path | None:
    """Lock the export directory; a place that cannot hold the lock file is left to ``ExportStudent``'s check,
    which refuses it with its own message right after."""
    try:
        return lock_directory(target, "export directory", "give this run another --export.dirpath", inside=False)
    except DirectoryInUseError:
        raise
    except OSError:
        return None


def _missing_ancestors(path: Path) -> list[Path]:
    """``path`` and its ancestors that do not exist yet (what creating ``path`` would create)."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing

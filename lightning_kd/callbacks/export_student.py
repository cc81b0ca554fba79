"""Export the student as a plain Hugging Face directory when fitting ends, after checking the place at fit start."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.cli import SaveConfigCallback
from pytorch_lightning.utilities import rank_zero_info

from lightning_kd.core.export_target import ExportTargetError, check_export_target, check_writable
from lightning_kd.errors import RunFailure
from lightning_kd.fault.atomic_io import atomic_write
from lightning_kd.fault.checkpoint_files import newest_checkpoint
from lightning_kd.fault.interrupted import report_interruption


class ExportFailedError(RunFailure, OSError):
    """Writing the student at the end of ``fit`` failed; the message says where the trained weights are.

    An ``OSError`` (what the failure nearly always is: permissions, a full disk) and a
    :class:`~lightning_kd.errors.RunFailure`: ``lightning-kd`` reports the message alone and exits with
    status 3; the original error is its ``__cause__``.
    """


class ExportStudent(pl.Callback):
    """Write ``module.export_student(dirpath)`` at the end of ``fit`` (rank zero only).

    At fit start (``setup`` and again ``on_fit_start``, once checkpoint directories are known) the
    target is checked, so a bad one fails in seconds instead of after training: it must be new, empty
    or an earlier lightning_kd export, must not be nor hold the run's checkpoint or log directories,
    and the directory it goes in must be writable (see :mod:`lightning_kd.core.export_target`). If the
    final write still fails, the trained weights are saved beside the checkpoints and the error names
    that file and the ``python -m lightning_kd.export`` command that exports it.

    An interrupted fit (SIGTERM, Ctrl-C) exports nothing; this callback then prints that the run is
    incomplete and the checkpoint to resume from (:mod:`lightning_kd.fault.interrupted`).

    Args:
        dirpath: target directory; default ``<trainer.log_dir>/student``. An earlier export there is
            replaced atomically (the new one is complete before the old one goes).
        enabled: set to ``False`` to skip the export and its checks.
    """

    def __init__(self, dirpath: str | None = None, enabled: bool = True) -> None:
        self.dirpath = dirpath
        self.enabled = enabled

    def target(self, trainer: pl.Trainer) -> Path:
        """The export directory (``trainer.log_dir`` is a collective call: every rank must call this)."""
        return Path(self.dirpath) if self.dirpath else Path(trainer.log_dir or trainer.default_root_dir) / "student"

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._check_target(trainer)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Checkpoint callbacks resolve their default directories in their own setup, after this one's.
        self._check_target(trainer)

    def _check_target(self, trainer: pl.Trainer) -> None:
        if not self.enabled:
            return
        target, directories = self.target(trainer), run_directories(trainer)
        problem = None
        if trainer.is_global_zero:
            try:
                check_export_target(target, directories)
                check_writable(target)
            except ExportTargetError as error:
                problem = str(error)
        # Every rank stops together; one that raised alone would leave the others waiting in a collective.
        problem = trainer.strategy.broadcast(problem)
        if problem is not None:
            raise ExportTargetError(problem)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.enabled or trainer.interrupted:
            return
        target, directories, config = self.target(trainer), run_directories(trainer), run_config(trainer)
        failure, cause = None, None
        if trainer.is_global_zero:
            try:
                check_export_target(target, directories)
                pl_module.export_student(target)
                rank_zero_info(f"Exported the student to {target}")
            except Exception as error:
                failure, cause = export_failure_message(trainer, pl_module, target, config, error), error
        failure = trainer.strategy.broadcast(failure)
        if failure is not None:
            raise ExportFailedError(failure) from cause

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        report_interruption(trainer, exception)


def run_directories(trainer: pl.Trainer) -> list[tuple[str, str]]:
    """``(what, directory)`` for the run's root, log and checkpoint directories (collective: call on every rank)."""
    found = [("default_root_dir", trainer.default_root_dir), ("log directory", trainer.log_dir)]
    for logger in trainer.loggers:
        found += [("log directory", getattr(logger, name, None)) for name in ("save_dir", "log_dir")]
    found += [("checkpoint directory", getattr(callback, "dirpath", None)) for callback in trainer.checkpoint_callbacks]
    return [(what, str(directory)) for what, directory in found if directory and "://" not in str(directory)]


def run_config(trainer: pl.Trainer) -> Path | None:
    """The ``config.yaml`` LightningCLI saved for this run, if it did (collective: call on every rank)."""
    for callback in trainer.callbacks:
        if isinstance(callback, SaveConfigCallback) and trainer.log_dir:
            return Path(trainer.log_dir) / callback.config_filename
    return None


def export_failure_message(trainer: pl.Trainer, pl_module: pl.LightningModule, target: Path, config: Path | None, error: Exception) -> str:
    """Why the export failed, where the trained weights are, and the command that exports them."""
    message = f"Could not export the student to {target} ({type(error).__name__}: {error})."
    try:
        weights = save_trained_weights(trainer, pl_module)
        where = f"The trained weights (step {trainer.global_step}) are saved in {weights}"
    except Exception as second:
        weights = newest_checkpoint(trainer)
        if weights is None:
            return message + f" Saving the trained weights failed too ({second}) and no checkpoint exists: they are lost."
        where = f"Saving the trained weights failed too ({second}); the newest checkpoint, {weights}, holds an earlier step's"
    command = f"python -m lightning_kd.export --config {config or '<the run config.yaml>'} --ckpt_path {weights} --dirpath {target}"
    return f"{message} {where}; once the cause is fixed, export them with:\n  {command}"


def save_trained_weights(trainer: pl.Trainer, pl_module: pl.LightningModule) -> Path:
    """Save the module's weights (no optimizer state: for export, not for resuming) beside the checkpoints.

    Rank zero only and no collective, unlike ``trainer.save_checkpoint``: the other ranks are not here.
    """
    places = [c.dirpath for c in trainer.checkpoint_callbacks if getattr(c, "dirpath", None) and "://" not in str(c.dirpath)]
    directory = Path(places[0] if places else trainer.default_root_dir)
    checkpoint = {
        "state_dict": pl_module.state_dict(),
        "global_step": trainer.global_step,
        "epoch": trainer.current_epoch,
        "pytorch-lightning_version": pl.__version__,
    }
    pl_module.on_save_checkpoint(checkpoint)  # the method's own record (e.g. where the teachers came from)
    return atomic_write(directory / f"student-weights-step={trainer.global_step}.ckpt", lambda handle: torch.save(checkpoint, handle))

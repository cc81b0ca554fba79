"""Export the student as a plain Hugging Face directory when fitting ends."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_info


class ExportStudent(pl.Callback):
    """Write ``module.export_student(dirpath)`` at the end of ``fit`` (rank zero only).

    Args:
        dirpath: target directory; default ``<trainer.log_dir>/student``. An existing directory
            is replaced atomically.
        enabled: set to ``False`` to skip the export.
    """

    def __init__(self, dirpath: str | None = None, enabled: bool = True) -> None:
        self.dirpath = dirpath
        self.enabled = enabled

    def target(self, trainer: pl.Trainer) -> Path:
        return Path(self.dirpath) if self.dirpath else Path(trainer.log_dir or trainer.default_root_dir) / "student"

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.enabled or trainer.interrupted:
            return
        target = self.target(trainer)
        if trainer.is_global_zero:
            pl_module.export_student(target)
            rank_zero_info(f"Exported the student to {target}")
        trainer.strategy.barrier("lightning_kd.export")

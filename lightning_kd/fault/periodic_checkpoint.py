"""Periodic checkpoints that a killed run resumes from exactly (``configs/trainer/checkpointing.yaml``)."""

from __future__ import annotations

import os
from typing import Any, Literal

import pytorch_lightning as pl
from lightning_fabric.utilities.cloud_io import get_filesystem
from pytorch_lightning.callbacks import ModelCheckpoint

from lightning_kd.fault.step_seed import batch_seed, seed_global_generators


class PeriodicCheckpoint(ModelCheckpoint):
    """A ``ModelCheckpoint`` every ``every_n_train_steps`` optimizer steps, with ``last.ckpt``, made for resuming.

    Three things differ from a plain ``ModelCheckpoint(every_n_train_steps=N, save_last=True)``:

    * The default directory is ``<trainer.default_root_dir>/checkpoints``, the same for every launch
      of the run, so ``--ckpt_path last`` finds the newest ``last.ckpt``. (Lightning's default is the
      logger's ``version_<n>`` directory, which is new at each launch: ``last`` would find nothing
      and silently start from scratch.) Give each run its own ``trainer.default_root_dir``.
    * With ``reseed_every_batch`` the global generators are reseeded before every training batch from
      (run seed, rank, global step, batch index), so dropout after a resume is the dropout the
      uninterrupted run drew (Lightning does not checkpoint RNG states). The run seed is
      ``seed_everything``'s, else drawn once and stored in the checkpoint.
    * The writes themselves are atomic when the trainer uses
      :class:`~lightning_kd.fault.AtomicCheckpointIO` (the ``lightning-kd`` default).

    No checkpoint is written when a step raises (e.g. :class:`~lightning_kd.fault.NonFiniteLossError`),
    so the newest checkpoint always holds the weights of a completed step.

    Args:
        every_n_train_steps: optimizer steps between checkpoints (each costs one or two full writes of
            the student, method parameters and optimizer state).
        dirpath: directory of the checkpoints; default ``<trainer.default_root_dir>/checkpoints``.
        filename: name pattern of the periodic files; default ``{epoch}-{step}``.
        save_top_k: ``-1`` keeps every periodic checkpoint (so a run that diverged can restart from
            before the divergence); ``1`` keeps only the newest; ``0`` writes only ``last.ckpt``.
        save_last: ``True`` also writes ``last.ckpt`` in full at each checkpoint (replaced atomically);
            ``"link"`` makes it a symlink to the newest periodic file (one write instead of two, but
            Lightning replaces the link by delete-then-create, so a kill in between leaves no
            ``last.ckpt`` until the next checkpoint); ``False`` writes none (then ``--ckpt_path last``
            has nothing to find).
        reseed_every_batch: reseed torch, NumPy and ``random`` before each training batch (see above);
            ``False`` keeps one global stream, and a resumed run then draws different dropout masks.
        verbose: log each save.
    """

    def __init__(
        self,
        every_n_train_steps: int = 500,
        dirpath: str | None = None,
        filename: str | None = None,
        save_top_k: int = -1,
        save_last: bool | Literal["link"] = True,
        reseed_every_batch: bool = True,
        verbose: bool = False,
    ) -> None:
        if every_n_train_steps < 1:
            raise ValueError(f"every_n_train_steps must be >= 1 (optimizer steps between checkpoints), got {every_n_train_steps}.")
        if save_top_k not in (-1, 0, 1):
            raise ValueError(
                f"save_top_k={save_top_k}: periodic checkpoints have no metric to rank, so keep all (-1), the newest (1) "
                "or none besides last.ckpt (0). To keep the best k by a metric, use a ModelCheckpoint with `monitor`."
            )
        super().__init__(
            dirpath=dirpath,
            filename=filename,
            save_top_k=save_top_k,
            save_last=save_last,
            every_n_train_steps=every_n_train_steps,
            verbose=verbose,
        )
        self.reseed_every_batch = reseed_every_batch
        self.base_seed: int | None = None

    def _use_default_dirpath(self, trainer: pl.Trainer) -> None:
        if self.dirpath is not None:
            return
        dirpath = os.path.join(str(trainer.default_root_dir), "checkpoints")
        self._fs = get_filesystem(dirpath)
        self.dirpath = os.path.realpath(dirpath) if "://" not in dirpath else dirpath

    def _find_last_checkpoints(self, trainer: pl.Trainer) -> set[str]:
        # Lightning resolves ``ckpt_path="last"`` before any ``setup`` hook, so the default directory
        # must be known here already.
        self._use_default_dirpath(trainer)
        return super()._find_last_checkpoints(trainer)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._use_default_dirpath(trainer)
        super().setup(trainer, pl_module, stage)
        if stage == "fit" and self.base_seed is None:
            seed = os.environ.get("PL_GLOBAL_SEED")
            drawn = int(seed) if seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
            # Every rank derives its batches' seeds from rank 0's run seed.
            self.base_seed = int(trainer.strategy.broadcast(drawn))

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if self.reseed_every_batch and self.base_seed is not None:
            seed_global_generators(batch_seed(self.base_seed, trainer.global_rank, trainer.global_step, batch_idx))

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "base_seed": self.base_seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        # The resumed run continues the interrupted run's stream of batch seeds.
        if state_dict.get("base_seed") is not None:
            self.base_seed = int(state_dict["base_seed"])

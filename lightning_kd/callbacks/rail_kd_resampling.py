"""RailKDResampling: re-draws RAIL-KD's random teacher layers every k epochs or every n steps."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_info
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from typing_extensions import override

from lightning_kd.callbacks.compatibility import keyed_generator, run_seed
from lightning_kd.callbacks.module_driver import ModuleDriver
from lightning_kd.callbacks.protocols import ResamplesTeacherLayers


class RailKDResampling(ModuleDriver):
    """Draws a new sorted set ``Λ`` of teacher layers for :class:`~lightning_kd.methods.RAILKD`.

    RAILKD with ``layer_selection="random"`` attaches one with the defaults below (a draw per epoch,
    as in the paper); an instance in the trainer's callbacks wins. Any module with
    ``resample_teacher_layers``, ``set_teacher_layers`` and ``layer_selection="random"``
    (:class:`~lightning_kd.callbacks.protocols.ResamplesTeacherLayers`) can be driven.

    * every ``k`` epochs (default 1: at the first batch of each epoch, kept for the whole epoch; GKD
      ``--rail_kd_epochs``): when ``current_epoch % k == 0`` and no draw was made for that epoch yet;
    * or every ``n`` optimizer steps (GKD ``--rail_kd_iters``; the choice for long pre-training runs
      with few epochs): when ``global_step % n == 0`` and no draw was made at that step yet, so all
      micro-batches of one step share ``Λ``.

    The first training batch always has a ``Λ``. Draws come from a generator keyed on (seed, epoch or
    step, teacher), so every DDP rank draws the same layers and a resumed run draws what the
    uninterrupted run drew; the current ``Λ`` and the last draw's epoch/step are saved with the
    callback's checkpoint state. Every strategy works (no parameter is unused in a step).

    Args:
        every_n_epochs: re-draw every ``k`` epochs. Default (when ``every_n_steps`` is not set): 1.
        every_n_steps: re-draw every ``n`` optimizer steps instead; exclusive with ``every_n_epochs``.
        log_draws: log each new ``Λ`` (GKD ``--rail_kd_show_hook_change``).
    """

    protocol = ResamplesTeacherLayers
    methods = ("RAILKD",)
    sets = ("teacher_layers",)

    def __init__(self, every_n_epochs: int | None = None, every_n_steps: int | None = None, log_draws: bool = False) -> None:
        if every_n_epochs is not None and every_n_steps is not None:
            raise ValueError("Set either every_n_epochs or every_n_steps, not both.")
        if every_n_epochs is None and every_n_steps is None:
            every_n_epochs = 1
        for name, value in (("every_n_epochs", every_n_epochs), ("every_n_steps", every_n_steps)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}.")
        self.every_n_epochs, self.every_n_steps, self.log_draws = every_n_epochs, every_n_steps, log_draws
        self.teacher_layers: list[list[int]] | None = None
        self.last_epoch: int | None = None
        self.last_step: int | None = None

    def draw(self, pl_module: ResamplesTeacherLayers, unit: str, index: int) -> list[list[int]]:
        """Draw ``Λ`` for epoch/step ``index`` (the module uses it from now on) and remember it."""
        drawn = pl_module.resample_teacher_layers(keyed_generator(run_seed(), "rail_kd", unit, index))
        layers = [list(chosen) for chosen in drawn]  # our own copy: it is saved with the callback's state
        self.teacher_layers = layers
        if self.log_draws:
            rank_zero_info(f"RAIL-KD teacher layers from {unit} {index}: {layers}")
        return layers

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if pl_module.layer_selection != "random":
            raise MisconfigurationException(
                f"RailKDResampling re-draws random teacher layers, but the module uses layer_selection="
                f"{pl_module.layer_selection!r} (fixed layers). Remove the callback or set layer_selection: random."
            )

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step == 0:  # a fresh run (not a resume) draws from scratch
            self.teacher_layers, self.last_epoch, self.last_step = None, None, None
        elif self.teacher_layers is not None:  # restored from a checkpoint
            pl_module.set_teacher_layers(self.teacher_layers)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        if self.every_n_epochs is not None and epoch % self.every_n_epochs == 0 and epoch != self.last_epoch:
            self.draw(pl_module, "epoch", epoch)
            self.last_epoch = epoch

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if self.every_n_steps is not None and step % self.every_n_steps == 0 and step != self.last_step:
            self.draw(pl_module, "step", step)
            self.last_step = step
        elif self.teacher_layers is None:  # e.g. resumed into an epoch that is not a multiple of k, with no saved state
            unit, index = ("epoch", trainer.current_epoch) if self.every_n_epochs is not None else ("step", step)
            self.draw(pl_module, unit, index)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"teacher_layers": self.teacher_layers, "last_epoch": self.last_epoch, "last_step": self.last_step}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.teacher_layers = state_dict["teacher_layers"]
        self.last_epoch, self.last_step = state_dict["last_epoch"], state_dict["last_step"]

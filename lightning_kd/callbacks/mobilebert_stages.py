"""MobileBERTStages: the progressive-transfer stage of :class:`~lightning_kd.methods.MobileBERT`."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_warn
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from typing_extensions import override

from lightning_kd.callbacks.compatibility import planned_steps, require_unused_parameter_support
from lightning_kd.callbacks.module_driver import ModuleDriver
from lightning_kd.callbacks.protocols import Staged


class MobileBERTStages(ModuleDriver):
    """Sets ``MobileBERT.stage`` (``s = 1 … L_S+1``) before every training batch, from ``trainer.global_step``.

    :class:`~lightning_kd.methods.MobileBERT` with ``progressive=True`` attaches one with the defaults
    below (the reference's equal phases over the planned steps); an instance in the trainer's callbacks
    wins. Any module with ``stage`` and ``num_stages`` (:class:`~lightning_kd.callbacks.protocols.Staged`)
    can be driven; one whose ``progressive`` attribute is ``False`` is refused.

    * ``steps_per_stage=n``: each of the ``L_S`` layer stages lasts ``n`` optimizer steps,
      ``s = min(L_S+1, 1 + ⌊i/n⌋)``; the last stage runs to the end.
    * otherwise the ``A`` steps (``total_steps``, GKD ``--lr_decay_iters``, or by default the planned
      ``trainer.estimated_stepping_batches``) are split into ``L_S + 1`` equal phases:
      ``s = min(L_S+1, 1 + ⌊i·(L_S+1)/A⌋)`` (the reference's rule).

    The stage is a function of the step, so a resumed run continues in the same stage; the ``A`` a run
    started with is saved in the checkpoint and kept on resume (the reference restarts at stage 1).

    Before its last stage MobileBERT leaves the head (and the layers above the stage) without a
    gradient, so DDP needs ``--trainer.strategy=ddp_find_unused_parameters_true``.

    Args:
        steps_per_stage: optimizer steps per layer stage; exclusive with ``total_steps``.
        total_steps: the ``A`` the equal phases divide (GKD ``--lr_decay_iters``); default: the planned steps.
    """

    protocol = Staged
    methods = ("MobileBERT",)
    sets = ("stage",)

    def __init__(self, steps_per_stage: int | None = None, total_steps: int | None = None) -> None:
        if steps_per_stage is not None and total_steps is not None:
            raise ValueError("Give steps_per_stage or total_steps, not both (each alone fixes the stage lengths).")
        if steps_per_stage is not None and steps_per_stage < 1:
            raise ValueError(f"steps_per_stage must be >= 1, got {steps_per_stage}.")
        if total_steps is not None and total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}.")
        self.steps_per_stage, self.total_steps = steps_per_stage, total_steps
        #: The ``A`` of the equal-phase rule in force (set at fit start, restored from checkpoints).
        self.phase_steps: int | None = total_steps
        self.stage = 1

    def stage_at(self, step: int, num_stages: int) -> int:
        """The stage at optimizer step ``step`` for a student with ``num_stages − 1`` layers."""
        if self.steps_per_stage is not None:
            return min(num_stages, 1 + step // self.steps_per_stage)
        if self.phase_steps is None:
            raise RuntimeError("MobileBERTStages has no step total yet; it is set when training starts.")
        return min(num_stages, 1 + step * num_stages // self.phase_steps)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        # A module may switch its stages off (MobileBERT's `progressive`); stages it would ignore are a mistake.
        if getattr(pl_module, "progressive", True) is False:
            raise MisconfigurationException(
                f"MobileBERTStages drives progressive stages but {type(pl_module).__name__} has progressive=False; remove "
                "the callback or set model.init_args.progressive: true."
            )
        if stage == "fit":
            require_unused_parameter_support(
                self, trainer, "before its last stage MobileBERT leaves the head and the layers above the stage unused"
            )

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.steps_per_stage is not None or self.total_steps is not None:
            return
        planned = planned_steps(trainer, self)
        if self.phase_steps is None or trainer.global_step == 0:
            self.phase_steps = planned
        elif planned != self.phase_steps:
            rank_zero_warn(
                f"MobileBERTStages: the resumed run plans {planned} steps but the stages were laid out for "
                f"{self.phase_steps}; it keeps {self.phase_steps}."
            )

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self.stage = self.stage_at(trainer.global_step, pl_module.num_stages)
        pl_module.stage = self.stage
        pl_module.log("schedule/mobilebert_stage", float(self.stage), on_step=True, on_epoch=False, batch_size=1)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "phase_steps": self.phase_steps}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.stage, self.phase_steps = state_dict["stage"], state_dict["phase_steps"]

"""SIDStages: the stage counter of :class:`~lightning_kd.methods.SID`."""

from __future__ import annotations

from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
from typing_extensions import override

from lightning_kd.callbacks.compatibility import planned_steps, require_unused_parameter_support
from lightning_kd.callbacks.module_driver import ModuleDriver
from lightning_kd.callbacks.protocols import Staged, StagedByDistance

TimeLimit = Literal["equal_phases", "epochs", "none"]


class SIDStages(ModuleDriver):
    """Sets ``SID.stage`` (``n = 1 … L_S+1``) before every training batch; ``n`` never decreases.

    :class:`~lightning_kd.methods.SID` attaches one with the defaults below (the GKD seed's equal
    phases); an instance in the trainer's callbacks wins. Any module with ``stage`` and ``num_stages``
    (:class:`~lightning_kd.callbacks.protocols.Staged`) can be driven; with ``cosine_threshold`` it
    also needs ``last_cls_distance`` (:class:`~lightning_kd.callbacks.protocols.StagedByDistance`).

    Two rules advance it:

    * time (``time_limit``): ``"equal_phases"`` (GKD ``--sid_lim_e=avg``) splits the planned
      ``I = trainer.estimated_stepping_batches`` optimizer steps into ``L_S + 1`` equal phases, so
      at ``i = trainer.global_step`` the stage is at least ``1 + ⌊i·(L_S+1)/I⌋``; ``"epochs"`` gives
      each stage ``epochs_per_stage`` epochs (the paper's per-layer epoch limit); ``"none"`` leaves
      only the threshold rule (any other GKD ``--sid_lim_e`` value).
    * threshold: after a training batch whose summed [CLS] cosine distance (averaged over DDP ranks,
      so ranks stay in step) is below ``cosine_threshold``, the next batch moves one stage on (GKD
      ``--sid_accumulate_t``; 0 never fires since the distance is ≥ 0).

    ``n`` and the planned ``I`` are saved with the callback's checkpoint state, so a resumed run
    continues in the same stage (the reference restarts at 1).

    Strategies: before its last stage SID leaves the head (and the layers above ``n``) without a
    gradient, so DDP needs ``--trainer.strategy=ddp_find_unused_parameters_true``; DeepSpeed ZeRO
    stages 1–2 work, ZeRO-3 and FSDP are refused.

    Args:
        time_limit: ``"equal_phases"``, ``"epochs"`` or ``"none"``.
        epochs_per_stage: epochs per stage; required with (and only with) ``time_limit="epochs"``.
        cosine_threshold: advance early when the step's summed [CLS] cosine distance is below it.
    """

    protocol = Staged  # StagedByDistance with a cosine_threshold: see required_protocol
    methods = ("SID",)
    sets = ("stage",)

    def __init__(
        self, time_limit: TimeLimit = "equal_phases", epochs_per_stage: int | None = None, cosine_threshold: float = 0.0
    ) -> None:
        if time_limit not in ("equal_phases", "epochs", "none"):
            raise ValueError(f"time_limit must be 'equal_phases', 'epochs' or 'none', got {time_limit!r}.")
        if (time_limit == "epochs") != (epochs_per_stage is not None):
            raise ValueError("epochs_per_stage is needed with, and only with, time_limit='epochs'.")
        if epochs_per_stage is not None and epochs_per_stage < 1:
            raise ValueError(f"epochs_per_stage must be >= 1, got {epochs_per_stage}.")
        if cosine_threshold < 0:
            raise ValueError(f"cosine_threshold must be >= 0 (0 disables it), got {cosine_threshold}.")
        if time_limit == "none" and cosine_threshold == 0:
            raise ValueError("With time_limit='none' only the threshold advances the stage; set cosine_threshold > 0.")
        self.time_limit, self.epochs_per_stage, self.cosine_threshold = time_limit, epochs_per_stage, cosine_threshold
        self.stage = 1
        self.total_steps: int | None = None

    def time_stage(self, step: int, epoch: int, total: int, num_stages: int) -> int:
        """The stage the time rule asks for at optimizer step ``step`` of ``total`` (epoch ``epoch``)."""
        if self.time_limit == "equal_phases":
            return min(num_stages, 1 + step * num_stages // total)
        if self.time_limit == "epochs":
            return min(num_stages, 1 + epoch // self.epochs_per_stage)
        return 1

    @override
    def required_protocol(self) -> type:
        # The distance is read only by the threshold rule.
        return StagedByDistance if self.cosine_threshold > 0 else Staged

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit":
            require_unused_parameter_support(
                self, trainer, "before its last stage SID leaves the head and the layers above the current stage unused"
            )

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        planned = planned_steps(trainer, self)
        if self.total_steps is None or trainer.global_step == 0:  # a fresh run (not a resume) starts at stage 1
            self.total_steps, self.stage = planned, 1
        elif planned != self.total_steps:
            rank_zero_warn(
                f"SIDStages: the resumed run plans {planned} steps but the stages were laid out for {self.total_steps}; "
                f"it keeps {self.total_steps}."
            )

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        timed = self.time_stage(trainer.global_step, trainer.current_epoch, self.total_steps, pl_module.num_stages)
        self.stage = min(pl_module.num_stages, max(self.stage, timed))
        pl_module.stage = self.stage
        pl_module.log("schedule/sid_stage", float(self.stage), on_step=True, on_epoch=False, batch_size=1)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.cosine_threshold <= 0 or self.stage >= pl_module.num_stages or pl_module.last_cls_distance is None:
            return
        distance = trainer.strategy.reduce(pl_module.last_cls_distance.detach().float().clone(), reduce_op="mean")
        if float(torch.as_tensor(distance)) < self.cosine_threshold:
            self.stage += 1

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "total_steps": self.total_steps}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.stage, self.total_steps = state_dict["stage"], state_dict["total_steps"]

"""StepSchedule: the base of callbacks whose value is a function of training progress ``i / I``.

``i`` is ``trainer.global_step`` (optimizer steps taken; all micro-batches of one step share it) and
``I`` is ``trainer.estimated_stepping_batches``, fixed the first time the schedule runs and saved with
the callback's state, so a run resumed with ``--ckpt_path`` continues the same curve exactly.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_warn
from typing_extensions import override

from lightning_kd.callbacks.compatibility import planned_steps
from lightning_kd.callbacks.module_driver import ModuleDriver


class StepSchedule(ModuleDriver):
    """Before every training batch, compute :meth:`value` and hand it to the module with :meth:`apply`.

    Subclasses implement :meth:`value` (a pure function of the step) and :meth:`apply`, name what they
    need from the module (:attr:`protocol`, :attr:`methods`, :attr:`sets`; checked in :meth:`setup`)
    and extend :meth:`setup` with strategy checks where needed. Override :meth:`value` in a subclass
    of a concrete schedule to try another curve with everything else (checks, logging, checkpointing)
    unchanged.

    Attributes:
        log_name: the value is logged as ``schedule/<log_name>`` each step.
    """

    log_name: str = "value"

    def __init__(self) -> None:
        self.total_steps: int | None = None
        self.last_value: float | None = None

    def value(self, step: int, total: int) -> float:
        """The scheduled value at optimizer step ``step`` of ``total``."""
        raise NotImplementedError

    def apply(self, pl_module: pl.LightningModule, value: float) -> None:
        """Hand ``value`` to the module (set the attribute its loss reads)."""
        raise NotImplementedError

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        planned = planned_steps(trainer, self)
        if self.total_steps is None or trainer.global_step == 0:  # a fresh run (not a resume) lays out its own curve
            self.total_steps = planned
        elif planned != self.total_steps:
            rank_zero_warn(
                f"{type(self).__name__}: the resumed run plans {planned} steps but the schedule was laid out for "
                f"{self.total_steps}; it keeps {self.total_steps} so the curve continues where it stopped."
            )

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        assert self.total_steps is not None, "on_train_start runs first"
        self.last_value = float(self.value(trainer.global_step, self.total_steps))
        self.apply(pl_module, self.last_value)
        pl_module.log(f"schedule/{self.log_name}", self.last_value, on_step=True, on_epoch=False, batch_size=1)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"total_steps": self.total_steps, "last_value": self.last_value}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.total_steps = state_dict["total_steps"]
        self.last_value = state_dict.get("last_value")

"""TheseusReplacingRate: the replacing-rate schedule of :class:`~lightning_kd.methods.Theseus`."""

from __future__ import annotations

from typing import Literal

import pytorch_lightning as pl
from typing_extensions import override

from lightning_kd.callbacks.compatibility import require_unused_parameter_support
from lightning_kd.callbacks.protocols import HasReplacingRate
from lightning_kd.callbacks.step_schedule import StepSchedule

RateSchedule = Literal["linear", "constant"]


class TheseusReplacingRate(StepSchedule):
    """Sets ``replacing_rate`` (the probability that a position runs its *student* layer) on the module
    before every training batch, from ``i = trainer.global_step`` and the planned total ``I``.
    :class:`~lightning_kd.methods.Theseus` attaches one with the defaults below; any module with a
    ``replacing_rate`` attribute (:class:`~lightning_kd.callbacks.protocols.HasReplacingRate`) can be driven.

    * ``"linear"`` (the paper's curriculum, GKD default): ``p(i) = min(1, r0 + (1 − r0)·i / (ρ·I))``,
      i.e. ``min(1, k·i + b)`` with ``b = r0`` and ``k = (1 − r0)/(ρI)``. With ``r0 = 0.3`` and
      ``ρ = 0.66``, ``p`` reaches 1 at 66 % of training.
    * ``"constant"`` (the paper's constant replacing rate): ``p = r0`` for ``i < ρ·I``, then 1.

    Either way the last ``(1 − ρ)`` of training trains the pure student (the paper's successor
    fine-tuning, same learning-rate schedule). To try another curve, subclass and override
    :meth:`value`.

    Strategies: replaced student layers get no gradient in a step, so DDP needs
    ``--trainer.strategy=ddp_find_unused_parameters_true``; DeepSpeed ZeRO stages 1–2 work, ZeRO-3
    and FSDP are refused.

    Args:
        replacing_rate: ``r0``, the rate at step 0 (GKD ``--theseus_replacing_rate``), in ``[0, 1]``.
        not_replaced_steps: ``ρ``, the fraction of the planned optimizer steps after which ``p = 1``
            (GKD ``--theseus_not_replaced_steps``), in ``(0, 1]``.
        schedule: ``"linear"`` or ``"constant"``.
    """

    log_name = "replacing_rate"
    protocol = HasReplacingRate
    methods = ("Theseus",)
    sets = ("replacing_rate",)

    def __init__(self, replacing_rate: float = 0.3, not_replaced_steps: float = 0.66, schedule: RateSchedule = "linear") -> None:
        super().__init__()
        if not 0.0 <= replacing_rate <= 1.0:
            raise ValueError(f"replacing_rate is a probability in [0, 1], got {replacing_rate}.")
        if not 0.0 < not_replaced_steps <= 1.0:
            raise ValueError(
                f"not_replaced_steps is the fraction of training after which only the student runs; it must lie in "
                f"(0, 1], got {not_replaced_steps}."
            )
        if schedule not in ("linear", "constant"):
            raise ValueError(f"schedule must be 'linear' or 'constant', got {schedule!r}.")
        self.replacing_rate, self.not_replaced_steps, self.schedule = replacing_rate, not_replaced_steps, schedule

    @override
    def value(self, step: int, total: int) -> float:
        horizon = self.not_replaced_steps * total
        if self.schedule == "constant":
            return self.replacing_rate if step < horizon else 1.0
        return min(1.0, self.replacing_rate + (1.0 - self.replacing_rate) * step / horizon)

    @override
    def apply(self, pl_module: HasReplacingRate, value: float) -> None:
        pl_module.replacing_rate = value

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit":
            require_unused_parameter_support(self, trainer, "Theseus leaves the student layers it replaces unused in a step")

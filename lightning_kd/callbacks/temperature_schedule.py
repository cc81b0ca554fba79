"""TemperatureSchedule: the annealed teacher scale of Annealing-KD and Continuation-KD."""

from __future__ import annotations

import math

from typing_extensions import override

from lightning_kd.callbacks.protocols import HasTeacherScale
from lightning_kd.callbacks.step_schedule import StepSchedule


def annealing_teacher_scale(step: int, total: int, max_temperature: float) -> float:
    """``φ(i) = 1 − (max(1, ⌈τ(i)⌉) − 1)/τ_max`` with ``τ(i) = (1 − i/I)·τ_max``.

    For an integer ``τ_max`` this is a staircase of ``τ_max`` equal phases, ``φ = 1/τ_max, 2/τ_max, …, 1``.
    """
    if float(max_temperature).is_integer():  # exact integer ceiling: no 2.0000001 → 3 surprises
        t_max = int(max_temperature)
        ceiling = -((-(total - step) * t_max) // total)
    else:
        ceiling = math.ceil((1.0 - step / total) * max_temperature - 1e-9)
    return 1.0 - (max(1, ceiling) - 1) / max_temperature


class TemperatureSchedule(StepSchedule):
    """Sets ``teacher_scale`` (``φ``, the factor on the teacher's logits in the logit MSE) of
    :class:`~lightning_kd.methods.AnnealingKD` / :class:`~lightning_kd.methods.ContinuationKD` (or any
    module with that attribute, :class:`~lightning_kd.callbacks.protocols.HasTeacherScale`) before
    every training batch, from ``i = trainer.global_step`` and the planned total ``I``:

    ``τ(i) = (1 − i/I)·τ_max`` and ``φ(i) = 1 − (max(1, ⌈τ(i)⌉) − 1)/τ_max``

    — the student first matches the teacher's logits shrunk to ``1/τ_max``, then ever sharper ones,
    and the last ``I/τ_max`` steps the logits themselves. The paper lowers the temperature by one per
    epoch-like phase; here the phases are equal fractions of the step budget, as in the GKD code.
    Every strategy works (the schedule changes no parameter's use).

    Both methods attach one with their seed's ``τ_max``; an instance in the trainer's callbacks wins.

    Args:
        max_temperature: ``τ_max`` (GKD ``--annealing_kd_max_t``, 7; Continuation-KD
            ``--continuation_kd_max_t``, 10); >= 1.
    """

    log_name = "teacher_scale"
    protocol = HasTeacherScale
    methods = ("AnnealingKD", "ContinuationKD")
    sets = ("teacher_scale",)

    def __init__(self, max_temperature: float = 7.0) -> None:
        super().__init__()
        if max_temperature < 1:
            raise ValueError(f"max_temperature must be >= 1, got {max_temperature}.")
        self.max_temperature = max_temperature

    @override
    def value(self, step: int, total: int) -> float:
        return annealing_teacher_scale(step, total, self.max_temperature)

    @override
    def apply(self, pl_module: HasTeacherScale, value: float) -> None:
        pl_module.teacher_scale = value

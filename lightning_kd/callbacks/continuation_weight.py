"""ContinuationWeight: the hard/soft mixing weight ψ of Continuation-KD."""

from __future__ import annotations

from typing_extensions import override

from lightning_kd.callbacks.protocols import HasHardMix
from lightning_kd.callbacks.step_schedule import StepSchedule


class ContinuationWeight(StepSchedule):
    """Sets ``hard_mix`` (``ψ``) of :class:`~lightning_kd.methods.ContinuationKD` (or any module with
    that attribute, :class:`~lightning_kd.callbacks.protocols.HasHardMix`) before every training
    batch, from ``i = trainer.global_step`` and the planned total ``I``:

    ``ψ(i) = i / (δ·I)`` while ``i ≤ σ·I``, then 1.

    The loss is ``ψ·hard + (1 − ψ)·soft``: the student starts on the teacher's logits alone and ends
    on the labels alone. With the seed's ``σ = 0.666`` and ``δ = 1.333``, ``ψ`` rises linearly to
    ≈ 0.5 at two thirds of training, then jumps to 1. Every strategy works. ContinuationKD attaches
    one with these defaults; an instance in the trainer's callbacks wins.

    Args:
        switch_fraction: ``σ``, the fraction of training after which ``ψ = 1`` (GKD
            ``--continuation_kd_psi_sep``), in ``[0, 1]``.
        ramp_denominator: ``δ``; the ramp's slope is ``1/(δ·I)`` (GKD ``--continuation_kd_psi_denominator``), > 0.
    """

    log_name = "hard_mix"
    protocol = HasHardMix
    methods = ("ContinuationKD",)
    sets = ("hard_mix",)

    def __init__(self, switch_fraction: float = 0.666, ramp_denominator: float = 1.333) -> None:
        super().__init__()
        if not 0.0 <= switch_fraction <= 1.0:
            raise ValueError(f"switch_fraction must lie in [0, 1], got {switch_fraction}.")
        if ramp_denominator <= 0:
            raise ValueError(f"ramp_denominator must be > 0, got {ramp_denominator}.")
        if switch_fraction > ramp_denominator:
            raise ValueError(
                f"With switch_fraction ({switch_fraction}) > ramp_denominator ({ramp_denominator}) ψ would exceed 1 before "
                "the switch; keep switch_fraction <= ramp_denominator."
            )
        self.switch_fraction, self.ramp_denominator = switch_fraction, ramp_denominator

    @override
    def value(self, step: int, total: int) -> float:
        if step <= self.switch_fraction * total:
            return step / (self.ramp_denominator * total)
        return 1.0

    @override
    def apply(self, pl_module: HasHardMix, value: float) -> None:
        pl_module.hard_mix = value

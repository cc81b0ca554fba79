"""Annealing-KD — Jafari et al. (2021), "Annealing Knowledge Distillation" (EACL).

Phase 1 of the paper: the student regresses the teacher's logits scaled by an annealing factor,
``L = soft_weight · mean_{b,c}(z^S − φ(i)·z^T)²`` (plus an optional hard term), where ``φ`` climbs a
staircase ``1/τ_max, 2/τ_max, …, 1`` over training. ``φ`` comes from the
:class:`~lightning_kd.callbacks.TemperatureSchedule` callback, which the method attaches itself
(``τ_max = 7``) unless the trainer has its own. Phase 2
(hard labels only) is plain fine-tuning: :class:`~lightning_kd.methods.StudentOnly`.

Its knobs (``soft_weight``, ``hard_weight``, ``soft_positions``, ``reduction``) are the method's own
arguments, not a ``prediction:`` block: the annealed term is a logit MSE against ``φ(i)·z^T``,
which the schedule rewrites every step, so the other knobs of a prediction loss (``soft_loss``,
``temperature``, ``t2_scale``, ``mse_teacher_scale``, ``class_mean``) would be meaningless or would
break the method.

Where we differ from the paper and the GKD reference: the paper lowers the temperature by one per
epoch-like phase; the reference (and we) use equal fractions of the step budget. For MLM logits the
MSE averages over the chosen positions (``reduction="masked_mean"``); ``"gkd"`` divides by all
positions like the reference.
"""

from __future__ import annotations

from dataclasses import replace

import pytorch_lightning as pl
from torch import Tensor

from lightning_kd.callbacks.defaults import unless_configured
from lightning_kd.callbacks.temperature_schedule import TemperatureSchedule
from lightning_kd.core.features import Features
from lightning_kd.core.module import DistillationModule
from lightning_kd.losses.masking import Reduction
from lightning_kd.losses.prediction import PredictionLoss, SoftPositions


class AnnealingKD(DistillationModule):
    """Logit regression onto the annealed teacher logits ``φ(i)·z^T``.

    :attr:`teacher_scale` is set before every training batch by
    :class:`~lightning_kd.callbacks.TemperatureSchedule`: ``fit`` attaches one with ``τ_max = 7``
    (:meth:`default_callbacks`) unless the trainer's callbacks hold one (then that one drives the
    run). When calling :meth:`compute_losses` directly, set :attr:`teacher_scale` yourself.

    Args:
        soft_weight: weight of the logit MSE (GKD ``--distill_soft_rate``; > 0).
        hard_weight: weight of the student's own task/MLM loss (the seed uses none).
        soft_positions: MLM positions the MSE covers: ``"masked_tokens"``, ``"all_tokens"`` or
            ``"all_positions"`` (task logits have one row per example).
        reduction: ``"masked_mean"`` or ``"gkd"`` (divide by all positions, for parity).
        **kwargs: teacher/student/optimizer arguments of :class:`DistillationModule`.
    """

    #: Its logits are read only by the prediction loss, the hard loss, the strategy and the metrics,
    #: so compact heads compute only the rows those read (DistillationModule.student_logit_rows).
    prediction_only_logits = True

    def __init__(
        self,
        *,
        soft_weight: float = 1.0,
        hard_weight: float = 0.0,
        soft_positions: SoftPositions = "masked_tokens",
        reduction: Reduction = "masked_mean",
        **kwargs,
    ) -> None:
        if soft_weight <= 0:
            raise ValueError(
                f"soft_weight weighs the annealed logit MSE and must be > 0, got {soft_weight}; for labels only use StudentOnly."
            )
        prediction = PredictionLoss(
            soft_weight=soft_weight, hard_weight=hard_weight, soft_loss="mse", soft_positions=soft_positions, reduction=reduction
        )
        super().__init__(prediction=prediction, **kwargs)
        #: ``φ``, the factor on the teacher's logits; set by TemperatureSchedule before every training batch.
        self.teacher_scale: float | None = None

    def scaled_prediction(self) -> PredictionLoss:
        """The prediction loss with the current ``φ`` on the teacher's logits."""
        if self.teacher_scale is None:
            raise RuntimeError(
                f"{type(self).__name__} has no teacher scale φ: a Trainer fit sets it (TemperatureSchedule, attached by "
                "default); set `method.teacher_scale = φ` before calling compute_losses directly."
            )
        return replace(self.prediction, mse_teacher_scale=self.teacher_scale)

    def teacher_terms(
        self, batch: dict[str, Tensor], student: Features, teacher: Features, teacher_index: int
    ) -> dict[str, Tensor]:
        per_sample = self.per_example_terms
        return {"soft": self.scaled_prediction().soft_features(student, teacher, batch, per_sample=per_sample)}

    # ------------------------------------------------------------------ schedule
    def default_callbacks(self) -> list[pl.Callback]:
        """The schedule ``fit`` attaches when the trainer has none: ``φ`` in ``τ_max = 7`` equal steps
        (GKD ``--annealing_kd_max_t=7``)."""
        return [TemperatureSchedule(max_temperature=7)]

    def configure_callbacks(self) -> list[pl.Callback]:
        return [*super().configure_callbacks(), *unless_configured(self, self.default_callbacks())]

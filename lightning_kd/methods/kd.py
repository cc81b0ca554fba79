"""KD — Hinton et al. (2015), "Distilling the Knowledge in a Neural Network".

The student matches the teacher's temperature-softened outputs (task logits when fine-tuning,
MLM logits at every masked position when pre-training) plus its own hard loss.

Where we differ from the GKD reference: the reference fine-tunes with soft cross-entropy *without*
``T²`` but pre-trains with ``T²``·KL; we use ``T²``·KL in both stages by default. The GKD presets
(``configs/gkd/kd``) set ``soft_loss: ce`` and ``t2_scale: false`` to reproduce it.

PD (Turc et al. 2019, "Well-Read Students Learn Better") is a recipe of this class: a student
pre-trained without a teacher (:class:`~lightning_kd.methods.StudentOnly`), then KD with
``soft_loss: ce``, ``temperature: 1``, ``hard_weight: 0``.
"""

from __future__ import annotations

from lightning_kd.core.module import DistillationModule
from lightning_kd.losses.masking import Reduction
from lightning_kd.losses.prediction import PredictionLoss, SoftLoss, SoftPositions


class KD(DistillationModule):
    """Soft-label knowledge distillation (both stages).

    Args:
        temperature: softmax temperature ``T``.
        soft_weight: weight of the soft term (GKD ``--distill_soft_rate``).
        hard_weight: weight of the student's own task/MLM loss (GKD ``--distill_hard_rate``); 0 turns it off.
        soft_loss: ``"kl"``, ``"ce"`` or ``"mse"`` (raw logits, no temperature).
        t2_scale: multiply ``kl``/``ce`` by ``T²``.
        soft_positions: MLM positions the soft term covers: ``"masked_tokens"``, ``"all_tokens"``
            (non-padding) or ``"all_positions"``.
        reduction: ``"masked_mean"`` or ``"gkd"`` (divide by all positions, for parity).
        **kwargs: teacher/student/optimizer arguments of :class:`DistillationModule`.
    """

    #: Its logits are read only by the prediction loss, the hard loss, the strategy and the metrics,
    #: so compact heads compute only the rows those read (DistillationModule.student_logit_rows).
    prediction_only_logits = True

    def __init__(
        self,
        *,
        temperature: float = 1.0,
        soft_weight: float = 1.0,
        hard_weight: float = 1.0,
        soft_loss: SoftLoss = "kl",
        t2_scale: bool = True,
        soft_positions: SoftPositions = "masked_tokens",
        reduction: Reduction = "masked_mean",
        **kwargs,
    ) -> None:
        prediction = PredictionLoss(
            soft_weight=soft_weight,
            hard_weight=hard_weight,
            temperature=temperature,
            soft_loss=soft_loss,
            t2_scale=t2_scale,
            soft_positions=soft_positions,
            reduction=reduction,
        )
        super().__init__(prediction=prediction, **kwargs)

"""KD — Hinton et al. (2015), "Distilling the Knowledge in a Neural Network".

The student matches the teacher's temperature-softened outputs (task logits when fine-tuning,
MLM logits at every masked position when pre-training) plus its own hard loss.

Where we differ from the GKD reference: the reference fine-tunes with soft cross-entropy *without*
``T²`` but pre-trains with ``T²``·KL; we use ``T²``·KL in both stages by default. The GKD presets
(``configs/gkd/kd``) set ``prediction: {soft_loss: ce, t2_scale: false}`` to reproduce it.

PD (Turc et al. 2019, "Well-Read Students Learn Better") is a recipe of this class: a student
pre-trained without a teacher (:class:`~lightning_kd.methods.StudentOnly`), then KD with
``prediction: {soft_loss: ce, temperature: 1, hard_weight: 0}``.

Its knobs are those of every method's prediction loss, in the same nested ``prediction:`` block::

    model:
      class_path: lightning_kd.methods.KD
      init_args:
        teacher: outputs/quickstart/teacher
        prediction:
          temperature: 2.0
          soft_weight: 1.0
          hard_weight: 0.0
"""

from __future__ import annotations

from lightning_kd.core.module import DistillationModule
from lightning_kd.losses.prediction import PredictionLoss


class KD(DistillationModule):
    """Soft-label knowledge distillation (both stages).

    Args:
        prediction: the soft and hard terms (:class:`~lightning_kd.losses.prediction.PredictionLoss`):
            ``temperature``, ``soft_weight`` (GKD ``--distill_soft_rate``), ``hard_weight`` (GKD
            ``--distill_hard_rate``; 0 turns the label term off), ``soft_loss`` (``"kl"``, ``"ce"`` or
            ``"mse"``), ``t2_scale``, ``soft_positions`` (MLM positions of the soft term), ``reduction``
            (``"masked_mean"``, or ``"gkd"`` for parity), … Default: ``T²``·KL at ``T = 1`` plus the
            hard loss, weight 1 each.
        **kwargs: teacher/student/optimizer arguments of :class:`DistillationModule`.
    """

    #: Its logits are read only by the prediction loss, the hard loss, the strategy and the metrics,
    #: so compact heads compute only the rows those read (DistillationModule.student_logit_rows).
    prediction_only_logits = True
    fused_heads_ready = True  # its terms read logits only through the prediction loss

    def __init__(self, *, prediction: PredictionLoss = PredictionLoss(), **kwargs) -> None:  # noqa: B008 - never mutated
        if prediction is None:
            raise ValueError("KD is its prediction loss: give `prediction` (its soft and hard terms), not None.")
        super().__init__(prediction=prediction, **kwargs)

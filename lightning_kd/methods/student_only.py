"""StudentOnly — train the student alone on its own task/MLM loss (the seed's "without teacher" stages).

Used to fine-tune a teacher before distilling it, for PD/SID/CKD's pre-training stage and for the
last plain fine-tuning stage of MiniLM, MiniLMv2 and DistilBERT students.
"""

from __future__ import annotations

from lightning_kd.core.module import DistillationModule
from lightning_kd.losses.prediction import PredictionLoss


class StudentOnly(DistillationModule):
    """Ordinary training of one model, with the same data, logging, checkpoints and export as a method.

    Args:
        **kwargs: student/optimizer arguments of :class:`DistillationModule` (no teacher).
    """

    #: Its logits are read only by the prediction loss, the hard loss, the strategy and the metrics,
    #: so compact heads compute only the rows those read (DistillationModule.student_logit_rows).
    prediction_only_logits = True
    fused_heads_ready = True  # its terms read logits only through the prediction loss

    requires_teacher = False

    def __init__(self, **kwargs) -> None:
        super().__init__(prediction=PredictionLoss(soft_weight=0.0, hard_weight=1.0), **kwargs)

"""DistilBERT — Sanh et al. (2019), "DistilBERT, a distilled version of BERT: smaller, faster,
cheaper and lighter".

Triple loss, pre-training stage (it also runs in fine-tuning, on task logits):

``L = α_ce · T² · KL(p^T_T ‖ p^S_T) + α_mlm · L_hard + α_cos · (1 − cos(H^S_L, H^T_L))``

* soft term: masked KL at temperature ``T`` over the positions chosen by ``prediction.soft_positions``;
* hard term: the student's own MLM loss (task cross-entropy when fine-tuning);
* cosine term: between the last hidden states, averaged over the rows chosen by ``cos_positions``.
  It needs equal widths (inside MixBaseline, TinyBERT's fit layer may bridge them).

The soft and hard terms are the method's prediction loss, the ``prediction:`` block every method
shares: ``α_ce`` is ``prediction.soft_weight`` (default 5), ``α_mlm`` ``prediction.hard_weight``
(default 2), ``T`` ``prediction.temperature`` (default 2). The cosine term, DistilBERT's own, is the
reusable :class:`DistilBERTIntermediate` (MixBaseline's ``distilbert`` block: ``alpha_cos``,
``cos_positions``, ``reduction``).

Student initialisation: the paper takes every other teacher layer, keeping both ends (12→6:
layers 0, 2, 4, 7, 9, 11). Use ``student_init: teacher_layers`` with ``student_layers`` from
:func:`lightning_kd.models.distilbert_init.spread_teacher_layers` (the shipped configs list them).

Where we differ from the GKD reference, and why:

* Soft-term positions default to every non-padding token (``prediction.soft_positions="all_tokens"``,
  the paper and official code); the reference's default is the MLM target positions only
  (``"masked_tokens"``; its ``--distilbert_ce_mask_padding`` is ``"all_tokens"``).
* Cosine rows default to non-padding tokens (``cos_positions="all_tokens"``, the reference's
  ``--distilbert_cos_mask_padding`` and the paper); ``"masked_tokens"`` is the reference default.
* ``reduction="masked_mean"`` (default) divides the cosine term by the kept rows; ``"gkd"`` divides
  by every position and counts each masked row as a loss of 1 (the reference zeroes both vectors,
  whose cosine is 0), reproducing its logged value exactly. ``prediction.reduction`` does the same
  for the soft term (the GKD presets set both).
* The reference silently skips the cosine whenever no MLM loss mask exists, i.e. always in
  classification fine-tuning. We compute it over the chosen tokens there too, and refuse
  ``cos_positions="masked_tokens"`` when there are no MLM targets; set ``alpha_cos: 0`` for parity.
* ``--distilbert_fix_layernorm`` (GLM pre-LN specific) is not ported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal

from torch import Tensor, nn

from lightning_kd.core.features import FeatureRequest, Features
from lightning_kd.core.method_settings import method_settings
from lightning_kd.core.module import DistillationModule
from lightning_kd.losses.hidden import cosine_distance
from lightning_kd.losses.masking import Reduction, padding_mask, target_mask
from lightning_kd.losses.prediction import PredictionLoss, SoftPositions
from lightning_kd.stages.positions import term_positions

CosinePositions = Literal["all_tokens", "masked_tokens"]


@dataclass
class DistilBERTPrediction(PredictionLoss):
    """DistilBERT's prediction loss with its paper's defaults: ``α_ce = 5`` (``soft_weight``) on
    ``T²``·KL at ``T = 2`` over every real token (``soft_positions``), ``α_mlm = 2``
    (``hard_weight``); every other field is :class:`~lightning_kd.losses.prediction.PredictionLoss`'s.
    The type of ``DistilBERT.prediction``, so a YAML ``prediction:`` block that sets some keys keeps
    these defaults for the others."""

    soft_weight: float = 5.0
    hard_weight: float = 2.0
    temperature: float = 2.0
    soft_positions: SoftPositions = "all_tokens"


#: DistilBERT's default prediction loss (start from it in Python: ``replace(DISTILBERT_PREDICTION, temperature=4.0)``).
DISTILBERT_PREDICTION = DistilBERTPrediction()


def check_distilbert_settings(settings: DistilBERTSettings) -> None:
    """Refuse a negative ``alpha_cos``, unknown ``cos_positions`` or ``reduction`` (run on every :data:`DistilBERTSettings`)."""
    if settings.alpha_cos < 0:
        raise ValueError(f"DistilBERT weights must be >= 0 (0 disables a term), got alpha_cos={settings.alpha_cos}.")
    if settings.cos_positions not in ("all_tokens", "masked_tokens"):
        raise ValueError(f"cos_positions must be 'all_tokens' or 'masked_tokens', got {settings.cos_positions!r}.")
    if settings.reduction not in ("masked_mean", "gkd"):
        raise ValueError(f"Unknown reduction {settings.reduction!r}; choose 'masked_mean' or 'gkd'.")


def check_distilbert_prediction(prediction: PredictionLoss) -> None:
    """Refuse soft-term positions that do not exist (``PredictionLoss`` reads them only at a step)."""
    if prediction.soft_positions not in ("masked_tokens", "all_tokens", "all_positions"):
        raise ValueError(
            "prediction.soft_positions (DistilBERT's ce_positions before it) must be 'all_tokens', 'masked_tokens' or "
            f"'all_positions', got {prediction.soft_positions!r}."
        )


class DistilBERTIntermediate(nn.Module):
    """DistilBERT's cosine term on the last hidden states; shared by :class:`DistilBERT` and MixBaseline.

    Args:
        settings: the knobs (``alpha_cos``, ``cos_positions``, ``reduction``).
        student_config: the student's HF config.
        teacher_configs: each teacher's HF config.
        token_level: whether the stage has token labels (MLM, causal LM); classification batches have none.
        student_projection: optional ``(hidden, teacher_index) → hidden`` map from the student's to
            a teacher's width (MixBaseline passes TinyBERT's fit layer, as the reference does).

    Raises:
        ValueError: widths differ without a projection, or ``cos_positions="masked_tokens"`` without MLM targets.
    """

    def __init__(
        self,
        settings: DistilBERTSettings,
        student_config,
        teacher_configs: list,
        token_level: bool,
        student_projection: Callable[[Tensor, int], Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.student_projection = student_projection
        self.active = settings.alpha_cos > 0
        if not self.active:
            return
        if settings.cos_positions == "masked_tokens" and not token_level:
            raise ValueError(
                "cos_positions='masked_tokens' needs token targets (MLM or next-token), which fine-tuning batches do not have: "
                "use cos_positions='all_tokens', or alpha_cos=0 (what the GKD reference silently does)."
            )
        if student_projection is None:
            for index, config in enumerate(teacher_configs):
                if config.hidden_size != student_config.hidden_size:
                    raise ValueError(
                        f"DistilBERT's cosine term compares last hidden states, but teacher {index} is "
                        f"{config.hidden_size} wide and the student {student_config.hidden_size}. Use a student of the "
                        "teacher's width, set alpha_cos=0, or combine with TinyBERT in MixBaseline (its fit layer bridges widths)."
                    )

    def student_request(self) -> FeatureRequest:
        return FeatureRequest(hidden_states=self.active)

    def teacher_request(self, teacher_index: int) -> FeatureRequest:
        return FeatureRequest(hidden_states=self.active)

    def forward(self, batch: dict[str, Tensor], student: Features, teacher: Features, teacher_index: int) -> dict[str, Tensor]:
        """``{"cos": α_cos · cosine distance}`` against one teacher, or ``{}`` when ``alpha_cos`` is 0."""
        if not self.active:
            return {}
        settings = self.settings
        hidden = student.hidden_states[-1]
        if self.student_projection is not None:
            hidden = self.student_projection(hidden, teacher_index)
        if settings.cos_positions == "masked_tokens":
            mask = target_mask(batch["labels"])
        else:
            positions = term_positions(batch)
            mask = padding_mask(positions) if positions is not None else None
        value = cosine_distance(hidden, teacher.hidden_states[-1], mask, settings.reduction)
        if settings.reduction == "gkd" and mask is not None:
            # The reference zeroes masked rows of both models; their cosine is 0, so each adds a loss of 1.
            value = value + (~mask).sum() / mask.numel()
        return {"cos": settings.alpha_cos * value}


class DistilBERT(DistillationModule):
    """DistilBERT triple-loss distillation (soft KL, hard MLM, hidden cosine); both stages.

    Args:
        alpha_cos: weight of the last-hidden-state cosine term (paper: 1; 0 disables it); needs equal widths.
        cos_positions: rows of the cosine term: ``"all_tokens"`` (non-padding; default) or
            ``"masked_tokens"`` (MLM targets; pre-training only).
        reduction: of the cosine term: ``"masked_mean"`` or ``"gkd"`` (divide by all positions, for parity).
        prediction: the soft and hard terms: ``soft_weight`` is the paper's ``α_ce`` (5),
            ``hard_weight`` its ``α_mlm`` (2), ``temperature`` its ``T`` (2); ``soft_positions`` the MLM
            positions of the soft term: ``"all_tokens"`` (default, paper), ``"masked_tokens"`` (GKD
            default) or ``"all_positions"``. A YAML ``prediction:`` block changes only the keys it
            lists; from Python, start from these defaults:
            ``dataclasses.replace(DISTILBERT_PREDICTION, temperature=4.0)``.
        **kwargs: teacher/student/optimizer arguments of :class:`DistillationModule`.

    Raises:
        ValueError: every weight is 0, a weight is negative, or a setting does not fit the models
            (see :class:`DistilBERTIntermediate`).
    """

    #: Its logits are read only by the prediction loss, the hard loss, the strategy and the metrics,
    #: so compact heads compute only the rows those read (DistillationModule.student_logit_rows).
    prediction_only_logits = True
    fused_heads_ready = True  # its terms read logits only through the prediction loss
    #: Arguments of earlier releases and where they are now (the CLI's "did you mean" reads it).
    moved_arguments: ClassVar[dict[str, str]] = {
        "alpha_ce": "prediction.soft_weight",
        "alpha_mlm": "prediction.hard_weight",
        "ce_positions": "prediction.soft_positions",
    }

    def __init__(
        self,
        *,
        alpha_cos: float = 1.0,
        cos_positions: CosinePositions = "all_tokens",
        reduction: Reduction = "masked_mean",
        prediction: DistilBERTPrediction | None = DISTILBERT_PREDICTION,
        **kwargs,
    ) -> None:
        settings = DistilBERTSettings.from_arguments(locals())
        if prediction is not None:
            check_distilbert_prediction(prediction)
        if alpha_cos == 0 and (prediction is None or prediction.soft_weight == prediction.hard_weight == 0):
            raise ValueError("DistilBERT has nothing to train: prediction.soft_weight, prediction.hard_weight and alpha_cos are all 0.")
        super().__init__(prediction=prediction, **kwargs)
        self.intermediate = DistilBERTIntermediate(
            settings, self.student.config, [t.config for t in self.teachers], self.task_stage.token_level
        )


#: DistilBERT's cosine-term arguments (``alpha_cos``, ``cos_positions``, ``reduction``) as one object:
#: what :class:`DistilBERTIntermediate` is built from, and MixBaseline's ``distilbert`` block.
DistilBERTSettings = method_settings(DistilBERT, "DistilBERTSettings", check=check_distilbert_settings)

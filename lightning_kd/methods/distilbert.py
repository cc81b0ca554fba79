"""DistilBERT — Sanh et al. (2019), "DistilBERT, a distilled version of BERT: smaller, faster,
cheaper and lighter".

Triple loss, pre-training stage (it also runs in fine-tuning, on task logits):

``L = α_ce · T² · KL(p^T_T ‖ p^S_T) + α_mlm · L_hard + α_cos · (1 − cos(H^S_L, H^T_L))``

* soft term: masked KL at temperature ``T`` over the positions chosen by ``ce_positions``;
* hard term: the student's own MLM loss (task cross-entropy when fine-tuning);
* cosine term: between the last hidden states, averaged over the rows chosen by ``cos_positions``.
  It needs equal widths (inside MixBaseline, TinyBERT's fit layer may bridge them).

Student initialisation: the paper takes every other teacher layer, keeping both ends (12→6:
layers 0, 2, 4, 7, 9, 11). Use ``student_init: teacher_layers`` with ``student_layers`` from
:func:`lightning_kd.models.distilbert_init.spread_teacher_layers` (the shipped configs list them).

Where we differ from the GKD reference, and why:

* Soft-term positions default to every non-padding token (``ce_positions="all_tokens"``, the paper
  and official code); the reference's default is the MLM target positions only
  (``"masked_tokens"``; its ``--distilbert_ce_mask_padding`` is ``"all_tokens"``).
* Cosine rows default to non-padding tokens (``cos_positions="all_tokens"``, the reference's
  ``--distilbert_cos_mask_padding`` and the paper); ``"masked_tokens"`` is the reference default.
* ``reduction="masked_mean"`` (default) divides by the kept rows; ``"gkd"`` divides by every
  position and, for the cosine, counts each masked row as a loss of 1 (the reference zeroes both
  vectors, whose cosine is 0), reproducing its logged value exactly.
* The reference silently skips the cosine whenever no MLM loss mask exists, i.e. always in
  classification fine-tuning. We compute it over the chosen tokens there too, and refuse
  ``cos_positions="masked_tokens"`` when there are no MLM targets; set ``alpha_cos: 0`` for parity.
* ``--distilbert_fix_layernorm`` (GLM pre-LN specific) is not ported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from torch import Tensor, nn

from lightning_kd.core.features import FeatureRequest, Features
from lightning_kd.core.module import DistillationModule
from lightning_kd.losses.hidden import cosine_distance
from lightning_kd.losses.masking import Reduction, padding_mask, target_mask
from lightning_kd.losses.prediction import PredictionLoss, SoftPositions

CosinePositions = Literal["all_tokens", "masked_tokens"]


@dataclass
class DistilBERTSettings:
    """DistilBERT's knobs (the :class:`DistilBERT` arguments, and MixBaseline's ``distilbert`` block).

    Attributes:
        temperature: softmax temperature ``T`` of the soft term.
        alpha_ce: weight of the soft term (0 disables it).
        alpha_mlm: weight of the student's own MLM/task loss (0 disables it).
        alpha_cos: weight of the hidden-state cosine term (0 disables it).
        ce_positions: MLM positions of the soft term: ``"all_tokens"`` (non-padding),
            ``"masked_tokens"`` (MLM targets; GKD default) or ``"all_positions"`` (padding included).
            Task logits have one row per example, so it does not apply when fine-tuning.
        cos_positions: rows of the cosine term: ``"all_tokens"`` (non-padding) or
            ``"masked_tokens"`` (MLM targets; pre-training only).
        reduction: ``"masked_mean"`` or ``"gkd"`` (divide by all positions, for parity).
    """

    temperature: float = 2.0
    alpha_ce: float = 5.0
    alpha_mlm: float = 2.0
    alpha_cos: float = 1.0
    ce_positions: SoftPositions = "all_tokens"
    cos_positions: CosinePositions = "all_tokens"
    reduction: Reduction = "masked_mean"

    def __post_init__(self) -> None:
        weights = {"alpha_ce": self.alpha_ce, "alpha_mlm": self.alpha_mlm, "alpha_cos": self.alpha_cos}
        negative = {k: v for k, v in weights.items() if v < 0}
        if negative:
            raise ValueError(f"DistilBERT weights must be >= 0 (0 disables a term), got {negative}.")
        if self.cos_positions not in ("all_tokens", "masked_tokens"):
            raise ValueError(f"cos_positions must be 'all_tokens' or 'masked_tokens', got {self.cos_positions!r}.")
        self.prediction_loss()  # validates temperature, ce_positions and reduction

    def prediction_loss(self) -> PredictionLoss:
        """The soft + hard part as a :class:`PredictionLoss`: ``α_ce·T²·KL`` and ``α_mlm·L_hard``."""
        if self.ce_positions not in ("masked_tokens", "all_tokens", "all_positions"):
            raise ValueError(
                f"ce_positions must be 'all_tokens', 'masked_tokens' or 'all_positions', got {self.ce_positions!r}."
            )
        if self.reduction not in ("masked_mean", "gkd"):
            raise ValueError(f"Unknown reduction {self.reduction!r}; choose 'masked_mean' or 'gkd'.")
        return PredictionLoss(
            soft_weight=self.alpha_ce,
            hard_weight=self.alpha_mlm,
            temperature=self.temperature,
            soft_loss="kl",
            t2_scale=True,
            soft_positions=self.ce_positions,
            reduction=self.reduction,
        )


class DistilBERTIntermediate(nn.Module):
    """DistilBERT's cosine term on the last hidden states; shared by :class:`DistilBERT` and MixBaseline.

    Args:
        settings: the knobs (only ``alpha_cos``, ``cos_positions`` and ``reduction`` are used here).
        student_config: the student's HF config.
        teacher_configs: each teacher's HF config.
        task_head: ``"masked_lm"`` or ``"sequence_classification"`` (MLM targets exist only in the former).
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
        task_head: str,
        student_projection: Callable[[Tensor, int], Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.student_projection = student_projection
        self.active = settings.alpha_cos > 0
        if not self.active:
            return
        if settings.cos_positions == "masked_tokens" and task_head != "masked_lm":
            raise ValueError(
                "cos_positions='masked_tokens' needs MLM targets, which fine-tuning batches do not have: "
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
            mask = padding_mask(batch["attention_mask"]) if "attention_mask" in batch else None
        value = cosine_distance(hidden, teacher.hidden_states[-1], mask, settings.reduction)
        if settings.reduction == "gkd" and mask is not None:
            # The reference zeroes masked rows of both models; their cosine is 0, so each adds a loss of 1.
            value = value + (~mask).sum() / mask.numel()
        return {"cos": settings.alpha_cos * value}


class DistilBERT(DistillationModule):
    """DistilBERT triple-loss distillation (soft KL, hard MLM, hidden cosine); both stages.

    Args:
        temperature: softmax temperature ``T`` of the soft term (paper and GKD seed: 2).
        alpha_ce: weight of the soft ``T²``·KL term (paper: 5).
        alpha_mlm: weight of the student's own MLM (or task) loss (paper: 2).
        alpha_cos: weight of the last-hidden-state cosine term (paper: 1); needs equal widths.
        ce_positions: MLM positions of the soft term: ``"all_tokens"`` (default, paper),
            ``"masked_tokens"`` (GKD default) or ``"all_positions"``.
        cos_positions: rows of the cosine term: ``"all_tokens"`` (default) or ``"masked_tokens"``
            (pre-training only).
        reduction: ``"masked_mean"`` or ``"gkd"`` (parity: divide by all positions).
        **kwargs: teacher/student/optimizer arguments of :class:`DistillationModule`.

    Raises:
        ValueError: every weight is 0, a weight is negative, or a setting does not fit the models
            (see :class:`DistilBERTIntermediate`).
    """

    #: Its logits are read only by the prediction loss, the hard loss, the strategy and the metrics,
    #: so compact heads compute only the rows those read (DistillationModule.student_logit_rows).
    prediction_only_logits = True

    def __init__(
        self,
        *,
        temperature: float = 2.0,
        alpha_ce: float = 5.0,
        alpha_mlm: float = 2.0,
        alpha_cos: float = 1.0,
        ce_positions: SoftPositions = "all_tokens",
        cos_positions: CosinePositions = "all_tokens",
        reduction: Reduction = "masked_mean",
        **kwargs,
    ) -> None:
        settings = DistilBERTSettings(
            temperature=temperature,
            alpha_ce=alpha_ce,
            alpha_mlm=alpha_mlm,
            alpha_cos=alpha_cos,
            ce_positions=ce_positions,
            cos_positions=cos_positions,
            reduction=reduction,
        )
        if alpha_ce == alpha_mlm == alpha_cos == 0:
            raise ValueError("DistilBERT has nothing to train: alpha_ce, alpha_mlm and alpha_cos are all 0.")
        super().__init__(prediction=settings.prediction_loss(), **kwargs)
        self.intermediate = DistilBERTIntermediate(
            settings, self.student.config, [t.config for t in self.teachers], self.task_head
        )

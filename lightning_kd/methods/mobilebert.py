"""MobileBERT — Sun et al. (2020), "MobileBERT: a Compact Task-Agnostic BERT for Resource-Limited Devices".

A thin, deep inverted-bottleneck student (``MobileBertConfig``: narrow ``intra_bottleneck_size``,
several stacked FFNs) is distilled during **pre-training** from an inverted-bottleneck teacher
(IB-BERT) of the same inter-block width and head count. With the uniform layer map ``g``
(:func:`~lightning_kd.core.layer_map.uniform_boundaries`, identity when the depths agree, as in the paper):

* attention transfer: ``KL(softmax(scores^T_{g(k+1)−1}) ‖ softmax(scores^S_k))`` over keys for
  student layers ``k = 0 … L_S−1`` (the last teacher layer of each block);
* feature-map transfer: ``MSE(H^S_k, H^T_{g(k)})`` for ``k = 0 … L_S`` (``H_0`` = embeddings).

Their sum is multiplied by ``intermediate_weight`` (GKD ``--mobilebert_kd_w``, 0.5).

Progressive knowledge transfer (``progressive=True``, the default) runs ``L_S + 1`` stages set by the
:class:`~lightning_kd.callbacks.MobileBERTStages` callback (attached by the method, equal phases of the
planned steps, unless the trainer has its own). In stage ``s ≤ L_S`` the attention terms of
layers ``k < s`` and the hidden terms ``k ≤ s`` train and there is no prediction loss; from stage
``L_S + 1`` on every term has full weight and the prediction loss (the seed: the hard MLM loss) is added.

Where we differ from the GKD reference, and why:

* The stage is derived from the optimizer step (``s = 1 + ⌊i·(L_S+1)/A⌋``, or a fixed number of steps
  per stage), not from a counter, so a resumed run continues in the right stage.
* Lower (already transferred) layers: the reference multiplies their loss terms by
  ``mobilebert_pkt_small_lr`` (0.1) — our default ``lower_layers="down_weight"`` keeps this. The paper
  instead freezes them; ``lower_layers="freeze"`` does that (no gradient reaches the embeddings and
  layers ``< s−1``, and their now constant terms are left out).
* Attention is rebuilt from the captured Q and K (pre-dropout, padded keys masked), not taken from
  ``output_attentions`` (post-dropout). With ``reduction="masked_mean"`` padded query rows / tokens are
  left out of the means; ``reduction="gkd"`` divides by every position instead (closest to the
  reference's mean over all elements).
"""

from __future__ import annotations

from dataclasses import dataclass

from typing import Literal

import pytorch_lightning as pl
from torch import Tensor

from lightning_kd.callbacks.defaults import unless_configured
from lightning_kd.callbacks.mobilebert_stages import MobileBERTStages
from lightning_kd.core.features import FeatureRequest, Features, shared_key_mask
from lightning_kd.core.layer_map import uniform_boundaries
from lightning_kd.core.module import DistillationModule
from lightning_kd.losses.attention import attention_kl
from lightning_kd.losses.hidden import hidden_mse
from lightning_kd.losses.masking import Reduction, padding_mask
from lightning_kd.losses.prediction import PredictionLoss

Term = Literal["attention", "hidden"]
LowerLayers = Literal["down_weight", "freeze"]
DEFAULT_LOWER_WEIGHT = 0.1


@dataclass
class MobileBERTPrediction(PredictionLoss):
    """MobileBERT's prediction loss with MobileBERT's defaults: the hard loss only: ``soft_weight`` 0.0; every other field is
    :class:`~lightning_kd.losses.prediction.PredictionLoss`'s. The type of ``MobileBERT.prediction``, so
    a YAML ``prediction:`` block that sets some keys keeps these defaults for the others."""

    soft_weight: float = 0.0


class MobileBERT(DistillationModule):
    """MobileBERT feature-map and attention transfer with progressive layer-wise stages.

    Teacher and student must be MobileBERT models (``model_type: mobilebert``) of equal
    ``hidden_size`` (inter-block width) and head count; the student may be shallower (uniform map).

    Args:
        terms: which intermediate terms to use: ``"attention"`` (attention-distribution KL) and/or
            ``"hidden"`` (hidden-state MSE).
        intermediate_weight: factor on the sum of intermediate terms (GKD ``--mobilebert_kd_w``).
        attention_weight: weight of each layer's attention KL.
        hidden_weight: weight of each hidden-state MSE.
        progressive: train in ``L_S + 1`` layer-wise stages driven by the
            :class:`~lightning_kd.callbacks.MobileBERTStages` callback (``fit`` attaches one unless the
            trainer's callbacks hold one; set :attr:`stage` yourself to call :meth:`compute_losses`
            directly); ``False``
            trains every term and the prediction loss from the first step.
        lower_layers: how layers below the current stage are treated: ``"down_weight"`` multiplies
            their terms by ``lower_layer_weight`` (GKD reference) or ``"freeze"`` stops their gradients
            (paper). Only with ``progressive``.
        lower_layer_weight: factor on lower-layer terms with ``"down_weight"`` (GKD
            ``--mobilebert_pkt_small_lr``); default 0.1. Not allowed with ``"freeze"``.
        reduction: ``"masked_mean"`` (real tokens only) or ``"gkd"`` (divide by every position).
        prediction: the prediction loss of the last stage (default: the hard MLM loss only, as in the seed).
        **kwargs: teacher/student/optimizer arguments of :class:`DistillationModule`.
    """

    #: Its logits are read only by the prediction loss, the hard loss, the strategy and the metrics,
    #: so compact heads compute only the rows those read (DistillationModule.student_logit_rows).
    prediction_only_logits = True

    def __init__(
        self,
        *,
        terms: list[Term] = ["attention", "hidden"],  # noqa: B006
        intermediate_weight: float = 0.5,
        attention_weight: float = 1.0,
        hidden_weight: float = 1.0,
        progressive: bool = True,
        lower_layers: LowerLayers = "down_weight",
        lower_layer_weight: float | None = None,
        reduction: Reduction = "masked_mean",
        prediction: MobileBERTPrediction | None = MobileBERTPrediction(),  # noqa: B008 - never mutated
        **kwargs,
    ) -> None:
        terms = list(terms)
        if not terms or any(t not in ("attention", "hidden") for t in terms) or len(set(terms)) != len(terms):
            raise ValueError(f"terms must be a non-empty list of distinct 'attention'/'hidden', got {terms!r}.")
        if intermediate_weight <= 0 or attention_weight < 0 or hidden_weight < 0:
            raise ValueError("intermediate_weight must be > 0 and attention_weight/hidden_weight >= 0; drop a term from `terms` instead of weighting it 0.")
        if lower_layers not in ("down_weight", "freeze"):
            raise ValueError(f"lower_layers must be 'down_weight' or 'freeze', got {lower_layers!r}.")
        if lower_layers == "freeze" and lower_layer_weight is not None:
            raise ValueError("lower_layer_weight only applies with lower_layers='down_weight'; remove it (frozen layers get no loss).")
        if not progressive and (lower_layers != "down_weight" or lower_layer_weight is not None):
            raise ValueError("lower_layers/lower_layer_weight only apply with progressive=True; remove them or set progressive: true.")
        if lower_layer_weight is not None and lower_layer_weight < 0:
            raise ValueError(f"lower_layer_weight must be >= 0, got {lower_layer_weight}.")
        if reduction not in ("masked_mean", "gkd"):
            raise ValueError(f"reduction must be 'masked_mean' or 'gkd', got {reduction!r}.")
        super().__init__(prediction=prediction, **kwargs)
        self.terms, self.reduction = terms, reduction
        self.intermediate_weight, self.attention_weight, self.hidden_weight = intermediate_weight, attention_weight, hidden_weight
        self.progressive, self.lower_layers = progressive, lower_layers
        self.lower_layer_weight = DEFAULT_LOWER_WEIGHT if lower_layer_weight is None else lower_layer_weight
        s_config = self.student.config
        if getattr(s_config, "model_type", None) != "mobilebert":
            raise ValueError(
                f"MobileBERT distils into a MobileBERT student (MobileBertConfig / MobileBertForMaskedLM), got "
                f"model_type {s_config.model_type!r}. Use a MobileBERT student, or TinyBERT/MiniLM for BERT-shaped models."
            )
        self.student_depth = s_config.num_hidden_layers
        #: Per teacher: the uniform boundaries ``g(0)=0 … g(L_S)=L_T``.
        self.boundaries: list[list[int]] = []
        for index, teacher in enumerate(self.teachers):
            t_config = teacher.config
            if getattr(t_config, "model_type", None) != "mobilebert":
                raise ValueError(
                    f"MobileBERT's teacher must be an inverted-bottleneck MobileBERT (IB-BERT) model; teacher {index} has "
                    f"model_type {t_config.model_type!r}. Pre-train an IB-BERT teacher first (see docs/methods/mobilebert.md)."
                )
            if t_config.hidden_size != s_config.hidden_size:
                raise ValueError(
                    f"Feature-map transfer compares hidden states directly: teacher {index} has hidden_size "
                    f"{t_config.hidden_size} but the student {s_config.hidden_size}. Give the student the teacher's "
                    "inter-block width (hidden_size) and narrow it with intra_bottleneck_size instead."
                )
            if t_config.num_attention_heads != s_config.num_attention_heads:
                raise ValueError(
                    f"Attention transfer compares heads one by one: teacher {index} has {t_config.num_attention_heads} heads "
                    f"but the student {s_config.num_attention_heads}. Use the teacher's num_attention_heads in the student."
                )
            if self.student_depth > t_config.num_hidden_layers:
                raise ValueError(
                    f"The student ({self.student_depth} layers) is deeper than teacher {index} "
                    f"({t_config.num_hidden_layers}); use a student with at most the teacher's depth."
                )
            self.boundaries.append(uniform_boundaries(t_config.num_hidden_layers, self.student_depth))
        #: Current stage ``s`` (1 … ``num_stages``); set by MobileBERTStages before every batch.
        self.stage: int | None = None

    # ------------------------------------------------------------------ stages
    @property
    def num_stages(self) -> int:
        """``L_S + 1``: one stage per student layer, then the joint stage with the prediction loss."""
        return self.student_depth + 1

    def current_stage(self) -> int:
        """The stage in force (``num_stages`` when not progressive)."""
        if not self.progressive:
            return self.num_stages
        if self.stage is None:
            raise RuntimeError(
                "MobileBERT(progressive=True) has no stage: a Trainer fit sets it (MobileBERTStages, attached by "
                "default); set `method.stage = s` (1-based) before calling compute_losses directly."
            )
        if not 1 <= self.stage <= self.num_stages:
            raise ValueError(f"MobileBERT's stage must be in 1..{self.num_stages}, got {self.stage}.")
        return self.stage

    def attention_layer_weights(self) -> dict[int, float]:
        """Student attention layer ``k`` → weight in the current stage (layers absent are not trained)."""
        stage = self.current_stage()
        if stage == self.num_stages:
            return {k: 1.0 for k in range(self.student_depth)}
        if self.lower_layers == "freeze":
            return {stage - 1: 1.0}
        return {k: (self.lower_layer_weight if k < stage - 1 else 1.0) for k in range(stage)}

    def hidden_index_weights(self) -> dict[int, float]:
        """Student hidden-state index ``k`` (0 = embeddings) → weight in the current stage."""
        stage = self.current_stage()
        if stage == self.num_stages:
            return {k: 1.0 for k in range(self.student_depth + 1)}
        if self.lower_layers == "freeze":
            return {k: 1.0 for k in range(stage + 1) if k >= stage or stage == 1}
        return {k: (self.lower_layer_weight if k < stage else 1.0) for k in range(stage + 1)}

    def frozen_below(self) -> int:
        """Student layers ``< frozen_below()`` (and the embeddings when > 0) get no gradient this stage."""
        stage = self.current_stage()
        if self.lower_layers != "freeze" or stage == self.num_stages:
            return 0
        return stage - 1

    @property
    def teacher_inputs_vary(self) -> str | None:
        """Why a teacher cache cannot serve this method (read by :mod:`lightning_kd.cache.compatibility`)."""
        if not self.progressive:
            return None
        return "with progressive=True the teacher tensors it requests change with the stage (progressive: false can use one)"

    # ------------------------------------------------------------------ schedule
    def default_callbacks(self) -> list[pl.Callback]:
        """The stages ``fit`` attaches when the trainer has none: with ``progressive``, ``L_S + 1`` equal
        phases of the planned steps (the reference's rule; GKD ``--lr_decay_iters`` is
        ``MobileBERTStages(total_steps=N)``). Without, nothing (a MobileBERTStages in the trainer is refused)."""
        return [MobileBERTStages()] if self.progressive else []

    def configure_callbacks(self) -> list[pl.Callback]:
        return [*super().configure_callbacks(), *unless_configured(self, self.default_callbacks())]

    # ------------------------------------------------------------------ features
    def check_construction(self) -> None:
        """As the base, with the last stage's requests (every layer a progressive run will read)."""
        stage, self.stage = self.stage, self.num_stages if self.progressive else self.stage
        try:
            super().check_construction()
        finally:
            self.stage = stage

    def student_request(self) -> FeatureRequest:
        layers = frozenset(self.attention_layer_weights()) if "attention" in self.terms else frozenset()
        return FeatureRequest(hidden_states="hidden" in self.terms, score_layers=layers)

    def teacher_request(self, teacher_index: int) -> FeatureRequest:
        g = self.boundaries[teacher_index]
        layers = frozenset(g[k + 1] - 1 for k in self.attention_layer_weights()) if "attention" in self.terms else frozenset()
        return FeatureRequest(hidden_states="hidden" in self.terms, score_layers=layers)

    def compute_losses(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """As the base, with the input of layer ``frozen_below()`` detached in ``lower_layers='freeze'`` stages."""
        frozen = self.frozen_below() if self.progressive else 0
        handle = None
        if frozen > 0:
            layer = self.student.base_model.encoder.layer[frozen]

            def detach_input(_module, args, kwargs):
                return (args[0].detach(), *args[1:]), kwargs

            handle = layer.register_forward_pre_hook(detach_input, with_kwargs=True)
        try:
            return super().compute_losses(batch)
        finally:
            if handle is not None:
                handle.remove()

    # ------------------------------------------------------------------ terms
    def _prediction_active(self) -> bool:
        return self.current_stage() == self.num_stages

    def student_terms(self, batch: dict[str, Tensor], student: Features) -> dict[str, Tensor]:
        return super().student_terms(batch, student) if self._prediction_active() else {}

    def teacher_terms(self, batch: dict[str, Tensor], student: Features, teacher: Features, teacher_index: int) -> dict[str, Tensor]:
        terms = super().teacher_terms(batch, student, teacher, teacher_index) if self._prediction_active() else {}
        g = self.boundaries[teacher_index]
        mask = batch.get("attention_mask")
        per_sample = self.per_example_terms
        if "attention" in self.terms:
            total = 0.0
            for k, weight in self.attention_layer_weights().items():
                kl = attention_kl(
                    student.attention_scores(k),
                    teacher.attention_scores(g[k + 1] - 1),
                    mask,
                    mask_queries=mask is not None,
                    reduction=self.reduction,
                    per_sample=per_sample,
                    key_mask=shared_key_mask(student, k, teacher, g[k + 1] - 1),
                )
                total = total + weight * kl
            terms["attention"] = self.intermediate_weight * self.attention_weight * total
        if "hidden" in self.terms:
            tokens = padding_mask(mask) if mask is not None else None
            total = 0.0
            for k, weight in self.hidden_index_weights().items():
                mse = hidden_mse(student.hidden_states[k], teacher.hidden_states[g[k]], tokens, self.reduction, per_sample)
                total = total + weight * mse
            terms["hidden"] = self.intermediate_weight * self.hidden_weight * total
        return terms

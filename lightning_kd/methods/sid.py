"""SID — Aguilar et al. (2020), "Knowledge Distillation from Internal Representations" (AAAI): stacked
internal distillation.

Training runs in ``L_S + 1`` stages ``n = 1, 2, …``. In stage ``n ≤ L_S`` the student matches, for
every ``k = 1…n`` (stacked: earlier layers keep being matched), the attention distributions of its
layer ``k`` and the [CLS] vector of ``H^S_k`` against the teacher layer that ends the ``k``-th GKD
segment (``g(k)``; 12→6: 2, 4, …, 12, so stage ``L_S`` pairs the final outputs):

``I_n = Σ_{k≤n} KL(A^T_{g(k)} ‖ A^S_k) + Σ_{k≤n} (1 − cos(H^S_k[CLS], H^T_{g(k)}[CLS]))``

with no prediction loss at all. In the last stage (``n = L_S + 1``) only the prediction loss trains
(the seed: soft cross-entropy at ``T = 1``, no hard labels). The stage counter lives in the
:class:`~lightning_kd.callbacks.SIDStages` callback (equal step phases by default), which the method
attaches itself unless the trainer has its own. Student and teachers need equal widths and, with the
attention term, equal head counts (no projection).

Where we differ from the GKD reference, and why:

* The attention KL averages over real query rows (``reduction="masked_mean"``, library policy);
  ``reduction="gkd"`` averages over all ``B·h·N`` rows, padded ones included, like the reference.
  Padded keys never count in either.
* The stage counter is saved in checkpoints (the reference restarts at stage 1 on resume), its
  time-based advance is derived from the global step (equal phases of ``I/(L_S+1)`` steps; the
  reference switches one forward later), and an epochs-per-stage option follows the paper.
* Non-divisible depths use the GKD segmentation for ``g`` (12→5: 3, 6, 9, 11, 12).
* "[CLS]" is chosen per model by ``pooling`` (:mod:`lightning_kd.core.pooling`): ``auto`` is the
  first token on encoders (the reference's numbers) and the last real token on decoder LMs, whose
  first position sees only itself.
* ``attention_weight`` scales the attention KL (1: the paper); 0 turns it off, and then no attention
  scores are requested and the student's head count need not equal the teacher's.

Across tokenizers (``teacher_tokenizer``): the attention KL compares attention maps whose rows and columns
are one encoding's positions, which have no counterpart in another tokenization, so SID is refused unless
``attention_weight: 0``. The internal stages then train the pooled "[CLS]" cosine alone, each model pooled
over its own tokens (the student with its batch's mask, the teacher with its own encoding's mask), and the
last stage the prediction loss on the task logits.
"""

from __future__ import annotations

from dataclasses import dataclass

from typing import ClassVar

import pytorch_lightning as pl
from torch import Tensor

from lightning_kd.callbacks.defaults import unless_configured
from lightning_kd.callbacks.sid_stages import SIDStages
from lightning_kd.core.features import FeatureRequest, Features, shared_key_mask
from lightning_kd.core.layer_map import uniform_boundaries
from lightning_kd.core.module import DistillationModule
from lightning_kd.core.pooling import Pooling, check_pooling, pool, resolve_pair
from lightning_kd.losses.attention import attention_kl
from lightning_kd.losses.hidden import cosine_distance
from lightning_kd.losses.masking import Reduction
from lightning_kd.losses.prediction import PredictionLoss


@dataclass
class SIDPrediction(PredictionLoss):
    """SID's prediction loss with SID's defaults: the soft term only: ``hard_weight`` 0.0; every other field is
    :class:`~lightning_kd.losses.prediction.PredictionLoss`'s. The type of ``SID.prediction``, so
    a YAML ``prediction:`` block that sets some keys keeps these defaults for the others."""

    hard_weight: float = 0.0


class SID(DistillationModule):
    """Stacked internal distillation: layer-by-layer attention and [CLS] matching, then the prediction loss.

    :attr:`stage` is set before every training batch by :class:`~lightning_kd.callbacks.SIDStages`:
    ``fit`` attaches one with equal step phases (:meth:`default_callbacks`) unless the trainer's
    callbacks hold one (then that one drives the run). When calling :meth:`compute_losses` directly,
    set :attr:`stage` yourself (1 … ``num_stages``).

    Args:
        reduction: averaging of the attention KL over query rows: ``"masked_mean"`` (real tokens) or
            ``"gkd"`` (every row, padding included; parity).
        pooling: which vector of ``H_k`` the cosine term compares ("[CLS]" in the paper), per model:
            ``"auto"`` (the first token on encoders, the last real token on causal LMs), ``"first"``,
            ``"last"`` or ``"mean"`` (over real tokens); see :mod:`lightning_kd.core.pooling`. The term
            keeps its name ``cls_cosine``.
        attention_weight: weight of the attention KL term (1: the paper's sum); 0 turns it off (only the
            pooled cosine trains the internal stages), which a teacher of another tokenizer needs.
        prediction: the prediction loss of the last stage (seed: soft at ``T = 1``, no hard term).
        **kwargs: teacher/student/optimizer arguments of :class:`DistillationModule`.
    """

    #: Why a teacher cache cannot serve SID (read by :mod:`lightning_kd.cache.compatibility`).
    teacher_inputs_vary: ClassVar[str | None] = "the teacher tensors it requests change with the training stage"

    def __init__(
        self,
        *,
        reduction: Reduction = "masked_mean",
        pooling: Pooling = "auto",
        attention_weight: float = 1.0,
        prediction: SIDPrediction | None = SIDPrediction(),  # noqa: B008 - never mutated
        **kwargs,
    ) -> None:
        if prediction is None:
            raise ValueError("SID's last stage trains on the prediction loss; give `prediction` (e.g. soft_weight: 1).")
        if reduction not in ("masked_mean", "gkd"):
            raise ValueError(f"reduction must be 'masked_mean' or 'gkd', got {reduction!r}.")
        if attention_weight < 0:
            raise ValueError(f"attention_weight must be >= 0 (0 turns the attention term off), got {attention_weight}.")
        if attention_weight == 0 and reduction != "masked_mean":
            raise ValueError("reduction only applies to the attention term; set attention_weight > 0 or drop reduction.")
        super().__init__(prediction=prediction, **kwargs)
        self.reduction, self.pooling, self.attention_weight = reduction, pooling, attention_weight
        check_pooling(pooling, self.student, self.teachers)
        s_config = self.student.config
        for index, teacher in enumerate(self.teachers):
            t_config = teacher.config
            # Without the attention term only the pooled vectors meet, so only the widths must agree.
            compared = ("hidden_size", "num_attention_heads") if attention_weight > 0 else ("hidden_size",)
            if any(getattr(t_config, name) != getattr(s_config, name) for name in compared):
                raise ValueError(
                    f"SID compares [CLS] vectors and attention maps directly, so teacher {index} (width {t_config.hidden_size}, "
                    f"{t_config.num_attention_heads} heads) and the student (width {s_config.hidden_size}, "
                    f"{s_config.num_attention_heads} heads) need equal widths and head counts (only widths with "
                    "attention_weight: 0). Initialise the student from the teacher (student_init: teacher_uniform) or "
                    "use a student of the teacher's shape."
                )
        depth = s_config.num_hidden_layers
        #: Per teacher: the teacher hidden-state index ``g(k)`` paired with student layer ``k = 1…L_S``.
        self.teacher_layer_map = [uniform_boundaries(t.config.num_hidden_layers, depth)[1:] for t in self.teachers]
        #: Current stage ``n`` (1 … ``num_stages``); set by SIDStages before every training batch.
        self.stage: int | None = None
        #: The latest step's summed [CLS] cosine distance (what SIDStages compares with its threshold).
        self.last_cls_distance: Tensor | None = None

    @property
    def num_stages(self) -> int:
        """``L_S + 1``: one stage per student layer, then the prediction-only stage."""
        return self.student.config.num_hidden_layers + 1

    def _current_stage(self) -> int:
        if self.stage is None:
            raise RuntimeError(
                "SID has no stage: a Trainer fit sets it (SIDStages, attached by default); set `method.stage = n` "
                "(1-based) before calling compute_losses directly."
            )
        if not 1 <= self.stage <= self.num_stages:
            raise ValueError(f"SID's stage must be in 1..{self.num_stages}, got {self.stage}.")
        return self.stage

    def check_construction(self) -> None:
        """As the base, in the last internal stage (it reads every attention layer the run will read)."""
        stage, self.stage = self.stage, self.num_stages - 1
        try:
            super().check_construction()
        finally:
            self.stage = stage

    @property
    def per_example_teacher_terms(self) -> bool:
        """Without the attention term (``attention_weight: 0``) every internal term compares one pooled vector per
        example, each model pooled over its own tokens, so a teacher may read another tokenizer."""
        return self.attention_weight == 0

    def cross_tokenizer_refusal(self) -> str | None:
        """As the base, naming the knob that lifts the attention refusal: ``attention_weight: 0``."""
        if self.attention_weight > 0:  # checked first: the base would give the generic attention reason
            return ("its attention term compares the teacher's and the student's attention maps position by position, "
                    "which has no counterpart across tokenizations; set attention_weight: 0 to train the internal "
                    "stages on the pooled [CLS] cosine alone")
        return super().cross_tokenizer_refusal()

    def internal(self) -> bool:
        """Whether the current stage matches internal layers (``n ≤ L_S``) rather than predictions."""
        return self._current_stage() < self.num_stages

    def student_request(self) -> FeatureRequest:
        if not self.internal():
            return FeatureRequest()
        layers = range(self.stage) if self.attention_weight > 0 else ()
        return FeatureRequest(hidden_states=True, score_layers=frozenset(layers))

    def teacher_request(self, teacher_index: int) -> FeatureRequest:
        if not self.internal():
            return FeatureRequest()
        ends = self.teacher_layer_map[teacher_index][: self.stage] if self.attention_weight > 0 else []
        return FeatureRequest(hidden_states=True, score_layers=frozenset(j - 1 for j in ends))

    def student_terms(self, batch: dict[str, Tensor], student: Features) -> dict[str, Tensor]:
        return {} if self.internal() else super().student_terms(batch, student)

    def teacher_terms(
        self, batch: dict[str, Tensor], student: Features, teacher: Features, teacher_index: int
    ) -> dict[str, Tensor]:
        if not self.internal():
            return super().teacher_terms(batch, student, teacher, teacher_index)
        mask = batch.get("attention_mask")
        # A teacher of another tokenizer pools over its own encoding's tokens; one reading our ids over ours.
        t_mask = teacher.attention_mask if self.reads_other_tokenizer(teacher_index) else mask
        s_mode, t_mode = resolve_pair(self.pooling, self.student, self.teachers[teacher_index], teacher_index)
        attention, cls = 0.0, 0.0
        for k, j in enumerate(self.teacher_layer_map[teacher_index][: self.stage], start=1):
            if self.attention_weight > 0:
                attention = attention + attention_kl(
                    student.attention_scores(k - 1),
                    teacher.attention_scores(j - 1),
                    mask,
                    mask_queries=self.reduction == "masked_mean" and mask is not None,
                    reduction=self.reduction,
                    key_mask=shared_key_mask(student, k - 1, teacher, j - 1),
                )
            s_vector, t_vector = pool(student.hidden_states[k], mask, s_mode), pool(teacher.hidden_states[j], t_mask, t_mode)
            cls = cls + cosine_distance(s_vector, t_vector)
        if self.attention_weight == 0:
            return {"cls_cosine": cls}
        # The paper's unweighted sum at the default weight 1 (multiplying by 1.0 changes no bit).
        return {"attention": self.attention_weight * attention, "cls_cosine": cls}

    def compute_losses(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        terms = super().compute_losses(batch)
        cls = terms.get("cls_cosine")
        self.last_cls_distance = cls.detach() if cls is not None else None
        return terms

    # ------------------------------------------------------------------ schedule
    def default_callbacks(self) -> list[pl.Callback]:
        """The stage counter ``fit`` attaches when the trainer has none: ``L_S + 1`` equal phases of the
        planned steps, no threshold (GKD ``--sid_lim_e=avg --sid_accumulate_t=0``). The paper's
        per-layer epoch limit is ``SIDStages(time_limit="epochs", epochs_per_stage=k)``."""
        return [SIDStages(time_limit="equal_phases", cosine_threshold=0.0)]

    def configure_callbacks(self) -> list[pl.Callback]:
        return [*super().configure_callbacks(), *unless_configured(self, self.default_callbacks())]

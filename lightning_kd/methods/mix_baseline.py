"""MixBaseline — the GKD toolkit's combination of published methods (no paper of its own).

It sums the intermediate losses of the listed methods, each computed by that method's own
``…Intermediate`` module (the same object its method class uses, so nothing is copied), plus
prediction-level losses:

``L = Σ_m w_m · intermediate_m + soft(prediction) + Σ_{p ∈ prediction_from} soft_p + hard``

Intermediate parts (``methods``): ``TinyBERT`` (:class:`~lightning_kd.methods.tinybert.TinyBERTIntermediate`),
``MiniLMv2``, ``MiniLM``, ``DistilBERT`` (its cosine term). Each is configured by its settings block
(``tinybert``, ``minilmv2``, ``minilm``, ``distilbert``), which takes the keys that method takes
itself (``tinybert: {terms: [final], layer_map: last}`` as ``TinyBERT(terms=[final], layer_map=last)``;
everything but ``prediction``), and weighted by ``method_weights`` (1 each by default, as the
reference). Every part owns its learnable pieces (TinyBERT's fit layers).

Prediction-level parts:

* ``prediction``: the plain soft/hard loss (GKD's ``--distill_ft_*`` flags in MixBaseline).
* ``prediction_from: [TinyBERT]``: TinyBERT's prediction loss, which in the reference is the plain
  loss again at temperature ``tinybert_temperature`` (GKD ``--mixbaseline_tinybert_t``, default 1);
  it needs ``prediction`` as its template.
* ``prediction_from: [DistilBERT]``: DistilBERT's prediction loss, ``α_ce·T²·KL`` (and the ``α_mlm``
  hard weight): ``distilbert_prediction``, by default DistilBERT's own default
  (:data:`~lightning_kd.methods.distilbert.DISTILBERT_PREDICTION`).

The hard loss is one top-level term ``"hard"``, counted once: its weight comes from exactly one of
``prediction.hard_weight`` and ``distilbert_prediction.hard_weight`` (when DistilBERT is in
``prediction_from``); both non-zero is an error.

The three GKD seed recipes (``configs/gkd/mix_baseline``):

1. pre-training: ``methods: [TinyBERT, MiniLMv2, MiniLM, DistilBERT]``, ``prediction_from: [DistilBERT]``;
2. fine-tuning: the same, with ``alpha_cos: 0`` (the reference silently skips DistilBERT's cosine
   in classification fine-tuning);
3. fine-tuning "KD + TinyBERT": ``methods: []``, ``prediction`` = soft CE at ``T=10`` + hard,
   ``prediction_from: [TinyBERT]``, ``tinybert_temperature: 1`` → ``CE_10 + CE_1 + hard``.

Where we differ from the GKD reference, and why:

* An empty ``methods`` list is valid (the reference crashes on it, so its own step 3 fails).
* The hard loss is one explicit term instead of depending on the order of ``prediction_from``.
* ``prediction`` is added whenever it is given; the reference adds it in fine-tuning only (its
  pre-training presets simply do not set it).
* Inside MixBaseline, when TinyBERT is listed with a hidden-state term, DistilBERT's cosine
  compares ``fit(H^S_L)`` with ``H^T_L`` through TinyBERT's fit layer (the reference passes every
  captured student hidden state through it); otherwise it needs equal widths.
* ``--mixbaseline_inter_checkpoint`` (activation checkpointing of each part) is not ported:
  use the trainer's activation checkpointing.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

from torch import Tensor, nn

from lightning_kd.core.features import FeatureRequest, Features
from lightning_kd.core.module import DistillationModule
from lightning_kd.core.terms import LossTerms
from lightning_kd.losses.prediction import PredictionLoss
from lightning_kd.methods.distilbert import (
    DISTILBERT_PREDICTION,
    DistilBERTIntermediate,
    DistilBERTPrediction,
    DistilBERTSettings,
    check_distilbert_prediction,
)
from lightning_kd.methods.minilm import MiniLMIntermediate, MiniLMSettings
from lightning_kd.methods.minilmv2 import MiniLMv2Intermediate, MiniLMv2Settings
from lightning_kd.methods.tinybert import TinyBERTIntermediate, TinyBERTSettings

MixMethod = Literal["TinyBERT", "MiniLMv2", "MiniLM", "DistilBERT"]
PredictionMethod = Literal["TinyBERT", "DistilBERT"]
_ORDER = ("TinyBERT", "MiniLMv2", "MiniLM", "DistilBERT")  # TinyBERT first: DistilBERT may use its fit layer


class MixBaseline(DistillationModule):
    """Sum of other methods' intermediate losses plus prediction-level losses (both stages).

    Args:
        methods: methods whose intermediate losses are summed (each at most once; may be empty).
        method_weights: weight per listed method (default 1 each); must be > 0.
        tinybert: TinyBERT's settings (terms, layer map, reduction); needs TinyBERT in ``methods``.
        minilmv2: MiniLMv2's settings (relation heads, teacher layer, padding); needs MiniLMv2 in ``methods``.
        minilm: MiniLM's settings; needs MiniLM in ``methods``.
        distilbert: DistilBERT's cosine-term settings (``alpha_cos``, ``cos_positions``,
            ``reduction``); needs DistilBERT in ``methods``.
        prediction_from: methods whose own prediction-level loss is added: ``TinyBERT`` (the
            ``prediction`` loss again at ``tinybert_temperature``) and/or ``DistilBERT``
            (``distilbert_prediction``).
        tinybert_temperature: temperature of TinyBERT's prediction loss (default 1, GKD
            ``--mixbaseline_tinybert_t``); needs TinyBERT in ``prediction_from``.
        distilbert_prediction: DistilBERT's prediction loss (``soft_weight`` = ``α_ce``,
            ``hard_weight`` = ``α_mlm``, ``temperature``, ``soft_positions``); default: DistilBERT's
            own default; needs DistilBERT in ``prediction_from``.
        prediction: the plain prediction-level loss (soft term and the single hard term).
        **kwargs: teacher/student/optimizer arguments of :class:`DistillationModule`.

    Raises:
        ValueError: a setting for a method that is not used, a method listed twice, a hard loss
            that would be counted twice, nothing to train, or a part that does not fit the models.
    """

    #: Its logits are read only by the prediction loss, the hard loss, the strategy and the metrics,
    #: so compact heads compute only the rows those read (DistillationModule.student_logit_rows).
    prediction_only_logits = True

    def __init__(
        self,
        *,
        methods: list[MixMethod] = [],  # noqa: B006 - never mutated; shown in --help
        method_weights: dict[MixMethod, float] | None = None,
        tinybert: TinyBERTSettings | None = None,
        minilmv2: MiniLMv2Settings | None = None,
        minilm: MiniLMSettings | None = None,
        distilbert: DistilBERTSettings | None = None,
        prediction_from: list[PredictionMethod] = [],  # noqa: B006
        tinybert_temperature: float | None = None,
        distilbert_prediction: DistilBERTPrediction | None = None,
        prediction: PredictionLoss | None = None,
        **kwargs,
    ) -> None:
        methods, prediction_from = list(methods), list(prediction_from)
        _check_lists(methods, prediction_from, method_weights)
        blocks = {"TinyBERT": tinybert, "MiniLMv2": minilmv2, "MiniLM": minilm}
        for name, block in blocks.items():
            if block is not None and name not in methods:
                raise ValueError(f"`{name.lower()}` settings are given but {name} is not in `methods`; add it or remove them.")
        if distilbert is not None and "DistilBERT" not in methods:
            where = "only in `prediction_from` (its prediction loss is `distilbert_prediction`)" if "DistilBERT" in prediction_from else (
                "in neither `methods` nor `prediction_from`")
            raise ValueError(f"`distilbert` settings (its cosine term) are given but DistilBERT is {where}; add it to `methods` or remove them.")
        if distilbert_prediction is not None and "DistilBERT" not in prediction_from:
            raise ValueError("distilbert_prediction sets DistilBERT's prediction loss: add DistilBERT to `prediction_from` or remove it.")
        if tinybert_temperature is not None and "TinyBERT" not in prediction_from:
            raise ValueError("tinybert_temperature sets TinyBERT's prediction loss: add TinyBERT to `prediction_from` or remove it.")
        if "TinyBERT" in prediction_from and prediction is None:
            raise ValueError(
                "TinyBERT's prediction loss is the plain `prediction` loss at tinybert_temperature, so it needs `prediction` "
                "(set its soft_weight/soft_loss; its hard_weight gives the single hard term)."
            )
        distilbert = distilbert or DistilBERTSettings()
        if "DistilBERT" in prediction_from:
            distilbert_prediction = distilbert_prediction or DISTILBERT_PREDICTION
            check_distilbert_prediction(distilbert_prediction)
        hard_sources = [p for p in (prediction, distilbert_prediction) if p is not None and p.hard_weight > 0]
        if len(hard_sources) > 1:
            raise ValueError(
                "The hard loss would be counted twice: both prediction.hard_weight and distilbert_prediction.hard_weight are > 0. "
                "Set one of them to 0."
            )
        if not methods and prediction is None and not prediction_from:
            raise ValueError("MixBaseline has nothing to train: list `methods`, `prediction_from` or give a `prediction` loss.")

        super().__init__(prediction=prediction, **kwargs)
        self.method_weights = {m: float((method_weights or {}).get(m, 1.0)) for m in methods}
        self.hard_weight = hard_sources[0].hard_weight if hard_sources else 0.0
        self.soft_losses: list[tuple[str, PredictionLoss]] = []
        if prediction is not None:
            self.soft_losses.append(("soft", prediction))
        if "TinyBERT" in prediction_from:
            temperature = 1.0 if tinybert_temperature is None else tinybert_temperature
            self.soft_losses.append(("tinybert_soft", replace(prediction, temperature=temperature, hard_weight=0.0)))
        if distilbert_prediction is not None:
            self.soft_losses.append(("distilbert_soft", distilbert_prediction))

        student_config, teacher_configs = self.student.config, [t.config for t in self.teachers]
        parts: dict[str, nn.Module] = {}
        for name in (m for m in _ORDER if m in methods):
            if name == "TinyBERT":
                parts[name] = TinyBERTIntermediate(tinybert or TinyBERTSettings(), student_config, teacher_configs)
            elif name == "MiniLMv2":
                parts[name] = MiniLMv2Intermediate(minilmv2 or MiniLMv2Settings(), student_config, teacher_configs)
            elif name == "MiniLM":
                parts[name] = MiniLMIntermediate(minilm or MiniLMSettings(), student_config, teacher_configs)
            else:
                tiny = parts.get("TinyBERT")
                projection = tiny.project if tiny is not None and tiny.fit is not None else None
                parts[name] = DistilBERTIntermediate(distilbert, student_config, teacher_configs, self.task_stage.token_level, projection)
        self.parts = nn.ModuleDict(parts)

    def student_request(self) -> FeatureRequest:
        request = FeatureRequest()
        for part in self.parts.values():
            request = request.merge(part.student_request())
        return request

    def teacher_request(self, teacher_index: int) -> FeatureRequest:
        request = FeatureRequest()
        for part in self.parts.values():
            request = request.merge(part.teacher_request(teacher_index))
        return request

    def prediction_losses(self) -> list[PredictionLoss]:
        """Every soft prediction loss (``prediction``, TinyBERT's and DistilBERT's): their positions name the logit rows."""
        return [loss for _, loss in self.soft_losses]

    def uses_student_loss(self) -> bool:
        return self.hard_weight > 0

    def student_terms(self, batch: dict[str, Tensor], student: Features) -> dict[str, Tensor]:
        """The single hard term (see the class docstring)."""
        if self.hard_weight > 0 and student.loss is not None:
            return {"hard": self.hard_weight * student.loss}
        return {}

    def teacher_terms(self, batch: dict[str, Tensor], student: Features, teacher: Features, teacher_index: int) -> LossTerms:
        terms = LossTerms()
        for name, loss in self.soft_losses:
            if loss.soft_weight > 0:
                # Every prediction part (``soft``, ``tinybert_soft``, ``distilbert_soft``) is a soft term,
                # per example when the strategy weights examples.
                terms.soft(name, loss.soft_features(student, teacher, batch, per_sample=self.per_example_terms))
        for method, part in self.parts.items():
            weight = self.method_weights[method]
            for name, value in part(batch, student, teacher, teacher_index).items():
                terms.intermediate(f"{method.lower()}_{name}", weight * value)
        return terms


def _check_lists(methods: list[str], prediction_from: list[str], method_weights: dict[str, float] | None) -> None:
    for label, items, allowed in (("methods", methods, _ORDER), ("prediction_from", prediction_from, ("TinyBERT", "DistilBERT"))):
        unknown = [m for m in items if m not in allowed]
        if unknown:
            raise ValueError(f"Unknown {label} entries {unknown}; choose from {list(allowed)} (names are case-sensitive).")
        if len(set(items)) != len(items):
            raise ValueError(f"`{label}` lists a method twice: {items}. List each method once.")
    for name, weight in (method_weights or {}).items():
        if name not in methods:
            raise ValueError(f"method_weights names {name!r}, which is not in `methods` {methods}.")
        if not weight > 0:
            raise ValueError(f"method_weights[{name!r}] must be > 0, got {weight}; remove the method from `methods` to disable it.")

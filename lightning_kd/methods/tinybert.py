"""TinyBERT — Jiao et al. (2020), "TinyBERT: Distilling BERT for Natural Language Understanding".

The student matches, layer by layer, the teacher's embedding output, pre-softmax attention scores
and hidden states (through a learnable ``Linear(d_S → d_T)`` fit layer), then, in a separate
prediction stage, its soft outputs. Both stages use this class:

* general / task intermediate distillation: ``terms`` = all four intermediate terms, no ``prediction``;
* prediction distillation: ``terms: []`` and a ``prediction`` (GKD: soft CE at ``T=1``, no hard loss).

Layer pairs follow the uniform segmentation of :mod:`lightning_kd.core.layer_map` (each teacher's
own depth): student hidden state ``H_j`` ↔ teacher ``H_{b_j}`` (``j = 0…L_S``; ``H_0`` is the
embedding output, ``H_{L_S}`` ↔ ``H_{L_T}`` the final pair) and student attention layer ``j`` ↔
teacher layer ``b_{j+1} − 1``. Terms are summed over layers with weight 1 each, as in the paper.

Where we differ from the GKD reference, and why:

* Padded-key score entries are set to exactly 0 in both models before the MSE (the official
  TinyBERT does this; GKD relies on both models writing the same mask constant, which breaks when
  precisions or HF versions differ).
* ``reduction="masked_mean"`` (default) averages over real tokens only (real query × real key for
  attention); ``reduction="gkd"`` reproduces the reference's plain mean over every position.
* The fit layer is created whenever a hidden-state term is used, even when widths match (as the
  reference), one per teacher (the reference's ``--tinybert_fit_compatible_mt``, required when teachers
  differ in width); for a single teacher this is the reference's shared ``fit_dense``. With no
  hidden-state term (the prediction stage) no fit layer is created: an unused parameter would
  break DDP. Fit layers are method parameters, so they are not exported and do not carry over to
  the next stage (the reference's checkpoint does carry them; chain stages through the export).
* Not ported: random interior layer maps (``--tinybert_random_layers``; left to the RAIL-KD work,
  which owns layer resampling) and ``--tinybert_custom_final``. The paper's data augmentation is
  not implemented (neither does the reference).
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from lightning_kd.core.features import FeatureRequest, Features, shared_key_mask
from lightning_kd.core.layer_map import (
    LayerMap,
    attention_pairs,
    hidden_state_pairs,
    resolve_layer_map,
)
from lightning_kd.core.method_settings import method_settings
from lightning_kd.core.module import DistillationModule
from lightning_kd.losses.attention import attention_score_mse
from lightning_kd.losses.hidden import hidden_mse
from lightning_kd.losses.masking import Reduction, padding_mask
from lightning_kd.losses.prediction import PredictionLoss
from lightning_kd.stages.positions import term_positions

TinyBERTTerm = Literal["embedding", "attention", "hidden", "final"]
TINYBERT_TERMS: tuple[str, ...] = ("embedding", "attention", "hidden", "final")
_HIDDEN_TERMS = ("embedding", "hidden", "final")


def check_tinybert_settings(settings: TinyBERTSettings) -> None:
    """Refuse unknown or repeated terms and an unknown reduction (run on every :data:`TinyBERTSettings`)."""
    unknown = [t for t in settings.terms if t not in TINYBERT_TERMS]
    if unknown:
        raise ValueError(f"Unknown TinyBERT terms {unknown}; choose from {list(TINYBERT_TERMS)}.")
    if len(set(settings.terms)) != len(settings.terms):
        raise ValueError(f"TinyBERT terms {settings.terms} list a term twice; list each term once.")
    if settings.reduction not in ("masked_mean", "gkd"):
        raise ValueError(f"Unknown reduction {settings.reduction!r}; choose 'masked_mean' or 'gkd'.")


def tinybert_pairs(teacher_layers: int, student_layers: int, layer_map: LayerMap = "uniform") -> dict[str, list[tuple[int, int]]]:
    """The ``(student, teacher)`` index pairs of each TinyBERT term.

    Hidden-state terms pair hidden-state indices (0 = embedding output); ``"attention"`` pairs
    0-based attention layers. 12→6 uniform: hidden ``(0,0) (1,2) … (5,10)`` + final ``(6,12)``,
    attention ``(0,1) (1,3) … (5,11)``.
    """
    mapping = resolve_layer_map(layer_map, teacher_layers, student_layers)
    hidden = hidden_state_pairs(mapping, include_embeddings=True)
    return {"embedding": hidden[:1], "hidden": hidden[1:-1], "final": hidden[-1:], "attention": attention_pairs(mapping)}


class TinyBERTIntermediate(nn.Module):
    """TinyBERT's intermediate loss for one student and its teachers; shared by :class:`TinyBERT` and MixBaseline.

    Args:
        settings: the knobs.
        student_config: the student's HF config.
        teacher_configs: each teacher's HF config (layer pairs and fit widths are per teacher).

    Raises:
        ValueError: head counts differ while ``attention`` is used, a layer map does not fit a
            teacher, or ``hidden`` is asked of a one-layer student.
    """

    def __init__(self, settings: TinyBERTSettings, student_config, teacher_configs: list) -> None:
        super().__init__()
        self.settings = settings
        self.terms = list(settings.terms)
        student_depth = student_config.num_hidden_layers
        self.pairs = [tinybert_pairs(c.num_hidden_layers, student_depth, settings.layer_map) for c in teacher_configs]
        if "hidden" in self.terms and student_depth < 2:
            raise ValueError("A one-layer student has no intermediate hidden state: drop 'hidden' from TinyBERT's terms.")
        if "attention" in self.terms:
            for index, config in enumerate(teacher_configs):
                if config.num_attention_heads != student_config.num_attention_heads:
                    raise ValueError(
                        f"TinyBERT's attention term compares scores head by head, but teacher {index} has "
                        f"{config.num_attention_heads} heads and the student {student_config.num_attention_heads}. "
                        "Use a student with as many heads, or drop 'attention' from terms."
                    )
        self.uses_hidden = any(t in self.terms for t in _HIDDEN_TERMS)
        # One fit layer per teacher, created even when widths match (as the reference); see module docstring.
        self.fit = (
            nn.ModuleList(nn.Linear(student_config.hidden_size, c.hidden_size) for c in teacher_configs)
            if self.uses_hidden
            else None
        )

    def _attention_layers(self, side: int, teacher_index: int | None = None) -> frozenset[int]:
        if "attention" not in self.terms:
            return frozenset()
        pair_lists = self.pairs if teacher_index is None else [self.pairs[teacher_index]]
        return frozenset(pair[side] for pairs in pair_lists for pair in pairs["attention"])

    def student_request(self) -> FeatureRequest:
        return FeatureRequest(hidden_states=self.uses_hidden, score_layers=self._attention_layers(0))

    def teacher_request(self, teacher_index: int) -> FeatureRequest:
        return FeatureRequest(hidden_states=self.uses_hidden, score_layers=self._attention_layers(1, teacher_index))

    def project(self, hidden: Tensor, teacher_index: int) -> Tensor:
        """Map student hidden states ``(…, d_S)`` to teacher ``teacher_index``'s width with its fit layer."""
        if self.fit is None:
            raise RuntimeError("This TinyBERT loss uses no hidden-state term, so it has no fit layer.")
        return self.fit[teacher_index](hidden)

    def forward(self, batch: dict[str, Tensor], student: Features, teacher: Features, teacher_index: int) -> dict[str, Tensor]:
        """Unweighted TinyBERT terms against one teacher, each summed over its layer pairs."""
        reduction = self.settings.reduction
        positions = term_positions(batch)
        token_mask = padding_mask(positions) if positions is not None else None
        hidden_mask = token_mask if reduction == "masked_mean" else None  # the reference averages over every position
        pairs = self.pairs[teacher_index]
        out: dict[str, Tensor] = {}
        for term in self.terms:
            if term == "attention":
                out[term] = sum(
                    attention_score_mse(
                        student.attention_scores(s),
                        teacher.attention_scores(t),
                        positions,
                        reduction,
                        key_mask=shared_key_mask(student, s, teacher, t),
                    )
                    for s, t in pairs["attention"]
                )
            else:
                out[term] = sum(
                    hidden_mse(self.project(student.hidden_states[s], teacher_index), teacher.hidden_states[t], hidden_mask, reduction)
                    for s, t in pairs[term]
                )
        return out


class TinyBERT(DistillationModule):
    """TinyBERT layer-wise distillation (general and task-specific, intermediate and prediction stages).

    Args:
        terms: which intermediate terms to use (default all four): ``"embedding"`` (``H_0`` pair),
            ``"attention"`` (pre-softmax scores of every mapped layer), ``"hidden"`` (intermediate
            hidden states ``H_1 … H_{L_S−1}``), ``"final"`` (the student's last hidden state); ``[]``
            for the prediction stage (then ``prediction`` is required). GKD: ``--tinybert_wo_att`` =
            drop ``attention``; ``--tinybert_wo_emb`` = drop ``embedding``; ``--tinybert_wo_final`` =
            drop ``final``; ``--tinybert_inter_final`` = ``[final]``; ``--tinybert_only_emb_final`` =
            ``[embedding, final]``; ``--tinybert_only_emb`` = ``[embedding]``; ``--tinybert_wo_inter`` = ``[]``.
        layer_map: ``"uniform"`` (default; GKD greedy segmentation), ``"first"``, ``"last"`` or a list
            of 1-based teacher hidden-state indices, one per student layer (applied to every teacher).
        reduction: ``"masked_mean"`` (real tokens only) or ``"gkd"`` (every position, the reference).
        prediction: the prediction-level loss; ``None`` (default) in the intermediate stages. GKD
            prediction stage: ``{soft_loss: ce, t2_scale: false, temperature: 1, hard_weight: 0}``.
        **kwargs: teacher/student/optimizer arguments of :class:`DistillationModule`.

    Raises:
        ValueError: nothing to train (no terms and no prediction), or the models do not fit the
            terms (see :class:`TinyBERTIntermediate`).
    """

    #: Its logits are read only by the prediction loss, the hard loss, the strategy and the metrics,
    #: so compact heads compute only the rows those read (DistillationModule.student_logit_rows).
    prediction_only_logits = True
    fused_heads_ready = True  # its terms read logits only through the prediction loss

    def __init__(
        self,
        *,
        terms: list[TinyBERTTerm] = list(TINYBERT_TERMS),  # noqa: B006 - never mutated; shown in --help
        layer_map: LayerMap = "uniform",
        reduction: Reduction = "masked_mean",
        prediction: PredictionLoss | None = None,
        **kwargs,
    ) -> None:
        super().__init__(prediction=prediction, **kwargs)
        settings = TinyBERTSettings.from_arguments(locals())
        if not settings.terms and prediction is None:
            raise ValueError("TinyBERT has nothing to train: list intermediate `terms` or give a `prediction` loss.")
        self.intermediate = TinyBERTIntermediate(settings, self.student.config, [t.config for t in self.teachers])


#: TinyBERT's intermediate-layer arguments (``terms``, ``layer_map``, ``reduction``) as one object:
#: what :class:`TinyBERTIntermediate` is built from, and MixBaseline's ``tinybert`` block.
TinyBERTSettings = method_settings(TinyBERT, "TinyBERTSettings", check=check_tinybert_settings)

"""PKD — Sun et al. (2019), "Patient Knowledge Distillation for BERT Model Compression" (EMNLP).

Besides the soft/hard prediction loss, the student "patiently" matches the teacher's intermediate
layers: for every mapped pair (student ``H_j``, teacher ``H_{map(j)}``) the squared distance between
the L2-normalised [CLS] vectors, weighted by ``beta``. PKD-Skip is
``layer_map="uniform"`` (12→6: teacher 2,4,6,8,10), PKD-Last is ``layer_map="last"`` (teacher
7…11); the final-layer pair is left out by default because the prediction loss already covers the
output. The prediction loss is mixed as ``(1−alpha)·hard + alpha·soft``.

Scale. The paper writes the patience loss as a squared distance summed over the features and the
layer pairs, but its authors' code (``patience_loss``: ``F.mse_loss`` of the stacked ``(B, pairs, d)``
normalised vectors) takes the *mean* over both, and ``beta = 100`` was tuned on that scale. Summing
instead makes the term ``pairs·d`` times stronger (3,840 for BERT-base 12→6: 5 pairs × 768; 768 for
MiniLM-L6 6→3: 2 pairs × 384), which swamps the prediction loss. The defaults are therefore the authors' code:
``feature_reduction="mean"`` and ``pair_reduction="mean"``; ``"sum"`` gives the written formula. Their
soft term is ``KLDivLoss(reduction="mean")``, the usual KL divided by the class count:
``prediction.class_mean=True`` reproduces it (off by default, as for every other method).

Where we differ from the GKD reference (``--student_model=pkd``), and why:

* Scale: the reference takes the element-wise MSE of the normalised vectors (``feature_reduction="mean"``)
  but *sums* over the layer pairs; the GKD presets set ``pair_reduction="sum"``.
* Defaults: the reference defaults (all tokens with padding, unnormalised, final layer included) are
  not PKD as published; ours are the published method, which is also what the logged GKD runs used
  (``--pkd_normalized_patience --pkd_only_cls --pkd_wo_final``). ``positions="all_tokens"`` masks
  padding; ``"all_positions"`` keeps it, as the reference does.
* Pooling: ``positions="cls"`` compares one pooled vector per sequence, chosen per model by
  ``pooling`` (:mod:`lightning_kd.core.pooling`): ``auto`` is the [CLS] token on encoders (the
  reference's numbers) and the last real token on decoder LMs, whose first position sees only itself.
* Non-divisible depths use the shared GKD segmentation (12→5: teacher 3,6,9,11) instead of the
  reference's zipped stride lists, which pair the wrong layers.
* Width: the reference requires equal widths. ``projection`` adds one learnable linear map (with
  bias) per teacher so teachers of other widths can be used (MT-BERT's "fit" layer).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from torch import Tensor, nn

from lightning_kd.core.features import FeatureRequest, Features
from lightning_kd.core.layer_map import LayerMap, resolve_layer_map
from lightning_kd.core.module import DistillationModule
from lightning_kd.core.pooling import Pooling, check_pooling, pool, resolve_pair
from lightning_kd.losses.patience import FeatureReduction, patience_distance
from lightning_kd.losses.prediction import PredictionLoss

PairKind = Literal["embedding", "intermediate", "final"]
PairReduction = Literal["sum", "mean"]
Positions = Literal["cls", "all_tokens", "all_positions"]
Projection = Literal["none", "student_to_teacher", "teacher_to_student"]


def pkd_pairs(kinds: list[PairKind], layer_map: LayerMap, teacher_depth: int, student_depth: int) -> list[tuple[int, int]]:
    """``(student, teacher)`` hidden-state index pairs for one teacher's depth.

    Student ``H_j`` (``j = 1…L_S−1`` for ``"intermediate"``, ``L_S`` for ``"final"``) pairs with teacher
    ``H_{map(j)}``; ``"embedding"`` pairs ``H_0`` with ``H_0``.
    """
    mapping = resolve_layer_map(layer_map, teacher_depth, student_depth)
    found = []
    if "embedding" in kinds:
        found.append((0, 0))
    if "intermediate" in kinds:
        found += [(j, mapping[j - 1]) for j in range(1, student_depth)]
    if "final" in kinds:
        found.append((student_depth, mapping[-1]))
    if not found:
        raise ValueError(
            f"A {student_depth}-layer student has no intermediate layer to match; add 'final' or 'embedding' to pairs."
        )
    return found


@dataclass
class PKDPrediction(PredictionLoss):
    """PKD's prediction loss with PKD's paper defaults: ``temperature`` 10.0; every other field is
    :class:`~lightning_kd.losses.prediction.PredictionLoss`'s. The type of ``PKD.prediction``, so
    a YAML ``prediction:`` block that sets some keys keeps these defaults for the others."""

    temperature: float = 10.0


class PKD(DistillationModule):
    """Patient knowledge distillation: prediction loss plus a patience loss on mapped hidden states.

    Args:
        alpha: mixes the prediction terms as ``(1 − alpha)·hard + alpha·soft`` (on top of the
            weights inside ``prediction``). GKD ``--pkd_alpha``.
        beta: weight of the patience loss. GKD ``--pkd_beta``; the paper's 100 was tuned on the authors'
            scale (mean over features and pairs, the defaults below).
        pairs: which hidden-state pairs are matched: ``"intermediate"`` (student layers
            ``1…L_S−1``), ``"final"`` (the last layer; GKD matches it unless ``--pkd_wo_final``),
            ``"embedding"`` (``H_0``; GKD ``--pkd_use_embed``).
        positions: ``"cls"`` (one pooled vector per sequence, see ``pooling``: the [CLS] vector on
            encoders, as in the paper; GKD ``--pkd_only_cls``), ``"all_tokens"`` (every non-padding
            token) or ``"all_positions"`` (padding included, the GKD default).
        pooling: how ``positions="cls"`` reduces a sequence, per model: ``"auto"`` (the first token
            on encoders, the last real token on causal LMs), ``"first"``, ``"last"`` or ``"mean"``
            (over real tokens); see :mod:`lightning_kd.core.pooling`. Refused with the other
            ``positions``, which compare every token and never pool.
        normalize: L2-normalise the vectors before the distance (GKD ``--pkd_normalized_patience``).
        feature_reduction: ``"mean"`` of the squared differences over the hidden dimension (the
            authors' code and the GKD reference) or their ``"sum"`` (the paper's written formula, ``d``
            times larger).
        pair_reduction: ``"mean"`` over the layer pairs (the authors' code) or ``"sum"`` (the GKD
            reference, and the paper's written formula).
        layer_map: teacher hidden-state index for each student layer: ``"uniform"`` (PKD-Skip, GKD
            segmentation for non-divisible depths), ``"last"`` (PKD-Last), ``"first"``, or an explicit
            list (1-based hidden-state indices, one per student layer). Computed per teacher.
        projection: ``"none"`` (widths must match), ``"student_to_teacher"`` (one learnable linear map
            per teacher applied to the student's states) or ``"teacher_to_student"`` (applied to the
            teacher's states).
        prediction: the soft/hard prediction loss before the ``alpha`` mix; ``None`` for the patience
            loss alone.
        **kwargs: teacher/student/optimizer arguments of :class:`DistillationModule`.
    """

    def __init__(
        self,
        *,
        alpha: float = 0.5,
        beta: float = 100.0,
        pairs: list[PairKind] = ["intermediate"],  # noqa: B006 - never mutated; a list keeps --help readable
        positions: Positions = "cls",
        pooling: Pooling = "auto",
        normalize: bool = True,
        feature_reduction: FeatureReduction = "mean",
        pair_reduction: PairReduction = "mean",
        layer_map: LayerMap = "uniform",
        projection: Projection = "none",
        prediction: PKDPrediction | None = PKDPrediction(),  # noqa: B008 - never mutated
        **kwargs,
    ) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(
                f"alpha mixes hard and soft terms as (1-alpha)*hard + alpha*soft; it must lie in [0, 1], got {alpha}."
            )
        if prediction is None and alpha != 0.5:
            raise ValueError("alpha weights the prediction terms, but prediction is None; remove alpha or set prediction.")
        # A new name, so the saved hyper-parameters keep the un-mixed `prediction` (reloading re-mixes it).
        mixed = None
        if prediction is not None:
            mixed = replace(
                prediction, soft_weight=alpha * prediction.soft_weight, hard_weight=(1.0 - alpha) * prediction.hard_weight
            )
        super().__init__(prediction=mixed, **kwargs)
        if beta <= 0:
            raise ValueError(f"beta weights the patience loss and must be > 0, got {beta}; for no patience loss use KD.")
        unknown = set(pairs) - {"embedding", "intermediate", "final"}
        if not pairs or unknown:
            raise ValueError(f"pairs must be a non-empty list of 'embedding', 'intermediate', 'final'; got {pairs}.")
        if positions not in ("cls", "all_tokens", "all_positions"):
            raise ValueError(f"positions must be 'cls', 'all_tokens' or 'all_positions', got {positions!r}.")
        if positions != "cls" and pooling != "auto":
            raise ValueError(
                f"pooling={pooling!r} reduces a sequence to one vector, but positions={positions!r} compares every "
                "token; use positions='cls' with it, or leave pooling at 'auto'."
            )
        if feature_reduction not in ("sum", "mean"):
            raise ValueError(f"feature_reduction must be 'mean' (authors' code, GKD) or 'sum' (paper), got {feature_reduction!r}.")
        if pair_reduction not in ("sum", "mean"):
            raise ValueError(f"pair_reduction must be 'mean' (authors' code) or 'sum' (GKD reference), got {pair_reduction!r}.")
        if projection not in ("none", "student_to_teacher", "teacher_to_student"):
            raise ValueError(f"projection must be 'none', 'student_to_teacher' or 'teacher_to_student', got {projection!r}.")
        self.alpha, self.beta = alpha, beta
        self.pairs, self.positions = list(dict.fromkeys(pairs)), positions
        self.normalize, self.feature_reduction, self.pair_reduction = normalize, feature_reduction, pair_reduction
        self.projection = projection
        self.pooling = pooling
        check_pooling(pooling, self.student, self.teachers)

        student_depth = self.student.config.num_hidden_layers
        student_width = self.student.config.hidden_size
        self.layer_pairs = [pkd_pairs(self.pairs, layer_map, t.config.num_hidden_layers, student_depth) for t in self.teachers]
        projections = []
        for index, teacher in enumerate(self.teachers):
            teacher_width = teacher.config.hidden_size
            if projection == "none" and teacher_width != student_width:
                raise ValueError(
                    f"PKD compares hidden states directly, so the student's width ({student_width}) must equal "
                    f"teacher {index}'s ({teacher_width}); set projection='student_to_teacher' or "
                    "'teacher_to_student' to learn a linear map per teacher."
                )
            if projection == "student_to_teacher":
                projections.append(nn.Linear(student_width, teacher_width))
            elif projection == "teacher_to_student":
                projections.append(nn.Linear(teacher_width, student_width))
        self.projections = nn.ModuleList(projections)

    @property
    def per_example_teacher_terms(self) -> bool:
        """Pooled per example (``positions="cls"``), so a teacher may read another tokenizer; not ``all_tokens``."""
        return self.positions == "cls"

    def student_request(self) -> FeatureRequest:
        return FeatureRequest(hidden_states=True)

    def teacher_request(self, teacher_index: int) -> FeatureRequest:
        return FeatureRequest(hidden_states=True)

    def patience(
        self, batch: dict[str, Tensor], student: Features, teacher: Features, teacher_index: int, per_sample: bool = False
    ) -> Tensor:
        """Unweighted patience loss with one teacher: the distances summed or averaged over the layer pairs
        (``pair_reduction``).

        Returns a scalar, or ``(B,)`` per-example values with ``per_sample`` (for per-sample
        multi-teacher strategies).
        """
        mask = batch["attention_mask"] if self.positions == "all_tokens" else None
        s_mode, t_mode = resolve_pair(self.pooling, self.student, self.teachers[teacher_index], teacher_index)
        total = 0.0
        for s_index, t_index in self.layer_pairs[teacher_index]:
            s_state, t_state = student.hidden_states[s_index], teacher.hidden_states[t_index]
            if self.positions == "cls":  # each model pools its own tokens (a teacher may read another tokenizer)
                s_state, t_state = pool(s_state, student.attention_mask, s_mode), pool(t_state, teacher.attention_mask, t_mode)
            if self.projection == "student_to_teacher":
                s_state = self.projections[teacher_index](s_state)
            elif self.projection == "teacher_to_student":
                t_state = self.projections[teacher_index](t_state)
            total = total + patience_distance(
                s_state, t_state, mask, self.normalize, self.feature_reduction, per_sample=per_sample
            )
        pairs = len(self.layer_pairs[teacher_index])
        return total / pairs if self.pair_reduction == "mean" else total

    def teacher_terms(
        self, batch: dict[str, Tensor], student: Features, teacher: Features, teacher_index: int
    ) -> dict[str, Tensor]:
        terms = super().teacher_terms(batch, student, teacher, teacher_index)
        terms["patience"] = self.beta * self.patience(batch, student, teacher, teacher_index)
        return terms

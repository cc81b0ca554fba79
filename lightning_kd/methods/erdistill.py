"""ERDistill — an experimental, unpublished method of the GKD toolkit's authors (Tan et al., 2023,
"GKD: A General Knowledge Distillation Framework for Large-scale Pre-trained Language Model"); no
paper describes it. It matches two relation terms per pair of layers:

* **local** (token relations): the Gram matrix of the layer's token states ``G = X Xᵀ`` (``N×N``),
  scaled by the sequence length ``n``, compared by MSE of ``G/n`` or by row-wise
  ``KL(softmax(G^T/√n) ‖ softmax(G^S/√n))``;
* **global** (vocabulary relations): the states projected onto the model's *own* input
  word-embedding matrix, ``P = X Eᵀ`` (``N×V``, no bias, no temperature), compared by MSE or
  row-wise KL. On the final pair this is raw LM-logit distillation through the tied decoder;
  gradients also reach the student's word embeddings.

Both terms compare each model with itself, so widths may differ freely (no learnable part); the
vocabulary must be shared. Terms are summed over the layer pairs (see ``layers``) and added to the
prediction loss. Both stages (pre-training and fine-tuning) are supported.

Layer pairs, with ``b_j`` the GKD uniform segment boundaries (12→6: 0,2,…,12):

==========================  ===========================================  =====================
``layers``                   student ↔ teacher hidden states              GKD ``--erdistill_inter``
==========================  ===========================================  =====================
``"all"``                    ``H_j ↔ H_{b_j}``, j = 0…L_S (final incl.)    ``all``
``"last_two"``               ``H_{L_S−1} ↔ H_{b_{L_S−1}}``, final ↔ final  ``two``
``"final"``                  final ↔ final                                 ``one``
``"final_plus_previous"``    ``H_{L_S−1} ↔`` final (weight 0.1), final ↔ final  ``1plus``
``"none"``                   no pair: prediction loss only (plain KD)      ``''``
==========================  ===========================================  =====================

Where we differ from the GKD reference, and why:

* The released parser does not declare the ``erdistill_*`` flags, so the reference crashes; the
  knobs here are the development branch's flags with positive names.
* The reference pairs teacher layers ``0, k, 2k, …`` (``k = ⌊L_T/L_S⌋``) zipped by position, which
  for non-divisible depths pairs the student's final output with a teacher middle layer; we use
  the shared segmentation (12→5: teacher 0,3,6,9,11,12).
* Padding: the reference includes padded positions in both terms and scales by the padded length.
  By default (``positions="all_tokens"``) padded tokens leave the rows and Gram columns and ``n`` is
  each example's real length; ``positions="all_positions"`` reproduces the reference.
* For BERT the global term uses the word-embedding matrix only (not the MLM transform or bias), as
  the spec recommends.
* Factorised embeddings (ALBERT; ELECTRA and DeBERTa-v2 with ``embedding_size != hidden_size``): the
  rows are narrower than the states, so each model's states are first mapped by the transpose of
  its *own* embedding → hidden projection, ``P = (X W) Eᵀ = X (E Wᵀ)ᵀ``: the states scored against
  each row as the encoder receives it in its hidden space (the projection's bias, the same shift
  for every column of a row, is left out). This projection exists in every model of those families
  (classifier or MLM), so both stages and every layer pair are covered; the MLM head's hidden →
  embedding map is not used, as for BERT (see :mod:`lightning_kd.models.embedding_projection`).
"""

from __future__ import annotations

from dataclasses import dataclass

from typing import Literal

from torch import Tensor

from lightning_kd.core.features import FeatureRequest, Features
from lightning_kd.core.layer_map import uniform_boundaries
from lightning_kd.core.module import DistillationModule
from lightning_kd.losses.prediction import PredictionLoss
from lightning_kd.losses.token_relation import RelationLoss, token_relation_loss, vocabulary_projection_loss
from lightning_kd.models.embedding_projection import check_vocabulary_scoring, states_in_embedding_space
from lightning_kd.stages.positions import term_positions

LayerChoice = Literal["all", "last_two", "final", "final_plus_previous", "none"]
Term = Literal["local", "global"]
Positions = Literal["all_tokens", "all_positions"]
_DEFAULT_TERMS = ("local", "global")


def erdistill_pairs(choice: LayerChoice, teacher_depth: int, student_depth: int) -> list[tuple[int, int, float]]:
    """``(student index, teacher index, weight)`` hidden-state pairs for one teacher."""
    bounds = uniform_boundaries(teacher_depth, student_depth)
    last_s, last_t = student_depth, teacher_depth
    if choice == "all":
        return [(j, bounds[j], 1.0) for j in range(student_depth + 1)]
    if choice == "last_two":
        return [(last_s - 1, bounds[last_s - 1], 1.0), (last_s, last_t, 1.0)]
    if choice == "final":
        return [(last_s, last_t, 1.0)]
    if choice == "final_plus_previous":
        return [(last_s - 1, last_t, 0.1), (last_s, last_t, 1.0)]
    if choice == "none":
        return []
    raise ValueError(f"layers must be 'all', 'last_two', 'final', 'final_plus_previous' or 'none', got {choice!r}.")


@dataclass
class ERDistillPrediction(PredictionLoss):
    """ERDistill's prediction loss with ERDistill's defaults (the GKD seed's): ``temperature`` 10.0; every other field is
    :class:`~lightning_kd.losses.prediction.PredictionLoss`'s. The type of ``ERDistill.prediction``, so
    a YAML ``prediction:`` block that sets some keys keeps these defaults for the others."""

    temperature: float = 10.0


class ERDistill(DistillationModule):
    """Token-relation (local) and vocabulary-relation (global) distillation over layer pairs (experimental).

    Args:
        layers: which student/teacher hidden states are paired (GKD ``--erdistill_inter``):
            ``"all"``, ``"last_two"``, ``"final"``, ``"final_plus_previous"`` or ``"none"`` (no
            intermediate loss; the prediction loss alone). See the module docstring's table.
        terms: which relation terms are computed per pair: ``"local"`` (token Gram matrices; GKD drops
            it with ``--erdistill_wo_local``) and/or ``"global"`` (vocabulary projections; GKD drops it
            with ``--erdistill_wo_global``).
        relation_loss: ``"mse"`` (GKD ``--erdistill_inter_mse``, used by every seed recipe) or ``"kl"``
            (the reference's default without that flag).
        positions: ``"all_tokens"`` (padding excluded; sequence length = real length) or
            ``"all_positions"`` (padding included and the padded length used; GKD reference).
        prediction: the soft/hard prediction loss; ``None`` for the relation terms alone.
        **kwargs: teacher/student/optimizer arguments of :class:`DistillationModule`.
    """

    #: Its logits are read only by the prediction loss, the hard loss, the strategy and the metrics,
    #: so compact heads compute only the rows those read (DistillationModule.student_logit_rows).
    prediction_only_logits = True
    fused_heads_ready = True  # its terms read logits only through the prediction loss

    #: The relations compare with the teacher's word-embedding matrix at every step.
    reads_teacher_weights = True

    def __init__(
        self,
        *,
        layers: LayerChoice = "all",
        terms: list[Term] = ["local", "global"],  # noqa: B006 - never mutated
        relation_loss: RelationLoss = "mse",
        positions: Positions = "all_tokens",
        prediction: ERDistillPrediction | None = ERDistillPrediction(),  # noqa: B008 - never mutated
        **kwargs,
    ) -> None:
        super().__init__(prediction=prediction, **kwargs)
        if relation_loss not in ("kl", "mse"):
            raise ValueError(f"relation_loss must be 'kl' or 'mse', got {relation_loss!r}.")
        if positions not in ("all_tokens", "all_positions"):
            raise ValueError(f"positions must be 'all_tokens' or 'all_positions', got {positions!r}.")
        unknown = set(terms) - set(_DEFAULT_TERMS)
        if unknown:
            raise ValueError(f"terms may contain 'local' and 'global' only; got {sorted(unknown)}.")
        if layers == "none":
            if tuple(terms) != _DEFAULT_TERMS or relation_loss != "mse" or positions != "all_tokens":
                raise ValueError(
                    "layers='none' computes no relation term, so terms, relation_loss and positions do not apply; "
                    "remove them (or choose layers)."
                )
            if prediction is None:
                raise ValueError("layers='none' with prediction=None leaves no loss term; set prediction or choose layers.")
        elif not terms:
            raise ValueError("terms is empty, so no relation term is computed; for plain KD set layers='none'.")
        student_depth = self.student.config.num_hidden_layers
        self.layers, self.terms = layers, [t for t in _DEFAULT_TERMS if t in terms]
        self.relation_loss, self.positions = relation_loss, positions
        self.layer_pairs = [erdistill_pairs(layers, t.config.num_hidden_layers, student_depth) for t in self.teachers]
        if layers != "none" and "global" in self.terms:
            check_vocabulary_scoring(self.student, "student", "ERDistill's global term")
            for index, teacher in enumerate(self.teachers):
                check_vocabulary_scoring(teacher, f"teacher {index}", "ERDistill's global term")

    def student_request(self) -> FeatureRequest:
        return FeatureRequest(hidden_states=self.layers != "none")

    def teacher_request(self, teacher_index: int) -> FeatureRequest:
        return FeatureRequest(hidden_states=self.layers != "none")

    def relations(
        self, batch: dict[str, Tensor], student: Features, teacher: Features, teacher_index: int, per_sample: bool = False
    ) -> dict[str, Tensor]:
        """Unweighted ``{"local": …, "global": …}`` (for the chosen terms) with one teacher, summed over pairs."""
        mask = term_positions(batch) if self.positions == "all_tokens" else None
        teacher_model = self.teachers[teacher_index]
        student_embeddings = self.student.get_input_embeddings().weight
        teacher_embeddings = teacher_model.get_input_embeddings().weight
        out: dict[str, Tensor] = {}
        for s_index, t_index, weight in self.layer_pairs[teacher_index]:
            s_state, t_state = student.hidden_states[s_index], teacher.hidden_states[t_index]
            if "local" in self.terms:
                value = token_relation_loss(s_state, t_state, mask, self.relation_loss, per_sample=per_sample)
                out["local"] = out.get("local", 0.0) + weight * value
            if "global" in self.terms:
                # Factorised families: states mapped onto the narrower embedding rows by the model's own projection.
                value = vocabulary_projection_loss(
                    states_in_embedding_space(self.student, s_state),
                    states_in_embedding_space(teacher_model, t_state),
                    student_embeddings,
                    teacher_embeddings,
                    mask,
                    self.relation_loss,
                    per_sample=per_sample,
                )
                out["global"] = out.get("global", 0.0) + weight * value
        return out

    def teacher_terms(
        self, batch: dict[str, Tensor], student: Features, teacher: Features, teacher_index: int
    ) -> dict[str, Tensor]:
        terms = super().teacher_terms(batch, student, teacher, teacher_index)
        if self.layers != "none":
            terms.update(self.relations(batch, student, teacher, teacher_index))
        return terms

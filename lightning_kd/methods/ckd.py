"""CKD — Park, Kim and Yang (2021), "Distilling Linguistic Context for Language Model Compression", EMNLP.

The student matches the teacher's *contextual relations* rather than its vectors:

* word relations (WR) inside each layer — the softmaxed cosines between token pairs
  (``word_distance``) and the angles each token forms with pairs of neighbours in a window
  (``word_angle``);
* layer-transforming relations (LTR) of each token — the softmaxed cosines between its vectors
  in different layers (``layer_distance``) and the angles between them (``layer_angle``);

plus the prediction-level soft/hard loss. All ``L_S + 1`` student hidden states (embeddings
included) are used; the teacher contributes the hidden states at the uniform boundaries
``g(0)=0 … g(L_S)=L_T`` (the GKD splitter, front-loaded for non-divisible depths). Relations are
computed within each model, so the widths may differ and nothing is learned besides the student.
The loss math lives in :mod:`lightning_kd.losses.relation`.

Where we differ from the GKD reference, and why:

* **Padded rows.** The reference's softmax over a row without valid entries (a padding row, or a
  sequence of one real token) yields NaN, which only old PyTorch ``kl_div`` hid. Such rows are
  excluded explicitly (spec group 3, §1.1 (a) and §4.1); results on valid rows are unchanged.
* **Masking and reduction.** By default a padded token never contributes: the word-angle window
  ignores padded neighbours (the reference masks only the window's centre) and each term is the
  mean over the entries it sums. ``reduction="gkd"`` restores the reference's denominators and its
  padded neighbours.
* **Memory.** Angles are built from Gram matrices, so the windowed term needs ``B·K·S·(S + w²)``
  floats instead of the reference's ``B·K·S·w·D``.
* **Prediction loss.** The library default soft term is ``T²``·KL; the reference fine-tunes with
  soft cross-entropy without ``T²`` (at the seed's T=3 that is a 9× smaller soft term). The GKD
  presets (``configs/gkd/ckd``) set ``soft_loss: ce`` and ``t2_scale: false``.
* **Per-sample losses.** The relation functions can return per-sample values (``per_sample=True``),
  which the reference could not.

Across tokenizers (``teacher_tokenizer``): every relation is between the student's token positions, so the
teacher is aligned to them by character spans (:meth:`~lightning_kd.core.method_hooks.MethodHooks.aligned_teacher`:
per student token and layer, the mean of the teacher vectors sharing a character with it) and the relations
run over the real student tokens that have a teacher partner (``[CLS]``, ``[SEP]`` and whitespace-only tokens
leave every term, as padding does). Word relations are then the teacher's cosines and angles between its
aligned vectors of those tokens; a token's layer relations compare the same mean of teacher tokens in every
layer, so its trajectory is well-defined. Two student tokens inside one teacher token share its vector (the
teacher relates them as one unit). The word-angle window runs over the student's positions; with
``reduction: gkd`` its windows keep the tokens without a partner, whose teacher vector does not exist, so that
combination is refused (``reduction: masked_mean`` runs). A teacher that reads the student's ids is used as is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_kd.core.features import FeatureRequest, Features
from lightning_kd.core.layer_map import LayerMap, resolve_layer_map
from lightning_kd.core.module import DistillationModule
from lightning_kd.losses.prediction import PredictionLoss
from lightning_kd.losses.relation import RelationReduction, contextual_relations
from lightning_kd.stages.positions import term_positions

DEFAULT_WINDOW = 21


@dataclass
class CKDPrediction(PredictionLoss):
    """CKD's prediction loss with CKD's defaults (the GKD seed's): ``soft_weight`` 0.9, ``hard_weight`` 0.1, ``temperature`` 3.0; every other field is
    :class:`~lightning_kd.losses.prediction.PredictionLoss`'s. The type of ``CKD.prediction``, so
    a YAML ``prediction:`` block that sets some keys keeps these defaults for the others."""

    soft_weight: float = 0.9
    hard_weight: float = 0.1
    temperature: float = 3.0


class CKD(DistillationModule):
    """Contextual knowledge distillation: word and layer-transforming relations (both stages).

    Args:
        word_distance_weight: weight of WR-Dist, the token-pair cosine relations (GKD
            ``--ckd_wrdist_w``); 0 disables it.
        word_angle_weight: weight of WR-Angle, the windowed token-triplet angles (``--ckd_wrangle_w``).
        layer_distance_weight: weight of LTR-Dist, the layer-pair cosine relations (``--ckd_ltrdist_w``).
        layer_angle_weight: weight of LTR-Angle, the layer-triplet angles (``--ckd_ltrangle_w``).
        window_size: odd width of the WR-Angle neighbour window, centre included (``--ckd_window_size``).
        layer_map: teacher hidden states paired with student layers ``1…L_S`` (the embeddings are
            always paired): ``"uniform"`` (GKD boundaries), ``"first"``, ``"last"`` or an explicit
            list of 1-based teacher indices; resolved per teacher from its own depth.
        reduction: ``"masked_mean"`` (padding never contributes) or ``"gkd"`` (the reference's
            denominators and windows, for parity).
        prediction: the soft/hard prediction loss; default soft weight 0.9, hard weight 0.1, T=3
            (the seed's rates); ``None`` keeps only the relation terms.
        **kwargs: teacher/student/optimizer arguments of :class:`DistillationModule`.
    """

    #: Its logits are read only by the prediction loss, the hard loss, the strategy and the metrics,
    #: so compact heads compute only the rows those read (DistillationModule.student_logit_rows).
    prediction_only_logits = True
    fused_heads_ready = True  # its terms read logits only through the prediction loss

    def __init__(
        self,
        *,
        word_distance_weight: float = 1.0,
        word_angle_weight: float = 10.0,
        layer_distance_weight: float = 1.0,
        layer_angle_weight: float = 10.0,
        window_size: int = DEFAULT_WINDOW,
        layer_map: LayerMap = "uniform",
        reduction: RelationReduction = "masked_mean",
        prediction: CKDPrediction | None = CKDPrediction(),  # noqa: B008 - never mutated
        **kwargs,
    ) -> None:
        super().__init__(prediction=prediction, **kwargs)
        self.weights = {
            "word_distance": word_distance_weight,
            "word_angle": word_angle_weight,
            "layer_distance": layer_distance_weight,
            "layer_angle": layer_angle_weight,
        }
        negative = [f"{name}_weight" for name, value in self.weights.items() if value < 0]
        if negative:
            raise ValueError(f"{', '.join(negative)} must be >= 0 (0 disables a term).")
        if not any(self.weights.values()) and prediction is None:
            raise ValueError("CKD has no loss term: set a relation weight > 0 or give a `prediction` loss.")
        if window_size < 1 or window_size % 2 == 0:
            raise ValueError(f"window_size must be a positive odd number (the window is centred on a token), got {window_size}.")
        if word_angle_weight == 0 and window_size != DEFAULT_WINDOW:
            raise ValueError("window_size only applies to the word-angle term; set word_angle_weight > 0 or drop window_size.")
        if not any(self.weights.values()) and (layer_map != "uniform" or reduction != "masked_mean"):
            raise ValueError("layer_map and reduction only apply to the relation terms; set a relation weight > 0 or drop them.")
        if reduction not in ("masked_mean", "gkd"):
            raise ValueError(f"Unknown reduction {reduction!r}; choose 'masked_mean' or 'gkd'.")
        self.window_size, self.reduction = window_size, reduction
        depth = self.student.config.num_hidden_layers
        #: Per teacher: the teacher hidden-state index paired with student hidden state 0…L_S.
        self.teacher_layers = [[0, *resolve_layer_map(layer_map, t.config.num_hidden_layers, depth)] for t in self.teachers]

    def _uses_relations(self) -> bool:
        return any(self.weights.values())

    def student_request(self) -> FeatureRequest:
        return FeatureRequest(hidden_states=self._uses_relations())

    def teacher_request(self, teacher_index: int) -> FeatureRequest:
        return FeatureRequest(hidden_states=self._uses_relations())

    #: Its relations read a teacher of another tokenizer aligned to the student's tokens (module docstring).
    aligns_own_hidden_states = True

    def cross_tokenizer_refusal(self) -> str | None:
        """As the base; also ``reduction: gkd`` with the word-angle term, whose windows keep partnerless tokens."""
        reason = super().cross_tokenizer_refusal()
        if reason is None and self.reduction == "gkd" and self.weights["word_angle"] > 0:
            return ("reduction: gkd keeps padded and special neighbours in the word-angle windows, where a teacher of "
                    "another tokenizer has no aligned vector; use reduction: masked_mean")
        return reason

    def teacher_terms(
        self, batch: dict[str, Tensor], student: Features, teacher: Features, teacher_index: int
    ) -> dict[str, Tensor]:
        terms = super().teacher_terms(batch, student, teacher, teacher_index)
        if not self._uses_relations():
            return terms
        # A teacher of another tokenizer at the student's positions, the term positions restricted to partnered tokens.
        batch, teacher = self.aligned_teacher(batch, teacher, teacher_index)
        s = torch.stack(student.hidden_states, dim=1)  # (B, K, S, D_s)
        t = torch.stack([teacher.hidden_states[j] for j in self.teacher_layers[teacher_index]], dim=1)
        mask = term_positions(batch)
        mask = torch.ones(s.shape[0], s.shape[2], dtype=torch.bool, device=s.device) if mask is None else mask.bool()
        active = [name for name, weight in self.weights.items() if weight > 0]
        # One call, so the terms of a level share their Gram matrices (one matrix product per model).
        relations = contextual_relations(s, t, mask, active, self.window_size, self.reduction)
        for name, value in relations.items():
            terms[name] = self.weights[name] * value
        return terms

"""Universal-KD — Wu et al. (2021), "Universal-KD: Attention-based Output-Grounded Intermediate Layer
Knowledge Distillation" (EMNLP).

Each pooled student layer state is projected to a common size ``d`` (one bias-free linear map per
student layer), and each pooled teacher layer state likewise (one map per teacher layer, per
teacher, so teachers of any width work). Every projected student layer ``u_k`` attends over the
projected teacher layers ``v_j`` with ``α_kj = softmax_j(u_k · v_j)`` and matches the mixture
``ṽ_k = Σ_j α_kj v_j`` with ``KL(softmax(ṽ_k) ‖ softmax(u_k))`` over the ``d`` features, summed over
student layers, averaged over the batch and weighted by ``gamma``. Nothing is detached: gradients
reach the student directly and through ``α``, and all projections are trained (and kept out of the
exported student). The prediction loss is added; the seed uses soft KL (``T = 1``) at 0.5, no hard term.

By default the intermediate layers are used (student ``H_1…H_{L_S−1}``, teacher ``H_1…H_{L_T−1}``;
no embeddings, no final layer); ``layers="final"`` uses only each model's last layer (GKD
``--universal_kd_cg``, where ``α = 1``). Pooling (:mod:`lightning_kd.core.pooling`) is per model:
``auto`` is the [CLS] vector on encoders (the reference's ``cls``) and the last real token on decoder
LMs, whose first position sees only itself; or a mean over tokens.

Where we differ from the GKD reference, and why:

* ``pooling="mean"`` averages over real tokens only (library policy: padding never dilutes a
  loss); ``"mean_with_padding"`` reproduces the reference's ``--universal_kd_avg``.
* The paper grounds intermediate layers in the output (label) space; the reference (and our
  default, ``projection_size=0`` → the student's width) projects into a hidden space instead.
  ``projection_size`` equal to the number of labels is closer to the paper.
* The reference's second stage (``--universal_kd_wo_inter`` with the hard loss only) is plain
  fine-tuning: run it with :class:`~lightning_kd.methods.StudentOnly`.
"""

from __future__ import annotations

from dataclasses import dataclass

from typing import Literal

import torch
from torch import Tensor, nn

from lightning_kd.core.features import FeatureRequest, Features
from lightning_kd.core.module import DistillationModule
from lightning_kd.core.pooling import check_pooling, pool, resolve_pair
from lightning_kd.losses.layer_attention import attended_kl
from lightning_kd.losses.prediction import PredictionLoss

Layers = Literal["intermediate", "final"]
#: The shared pooling modes plus GKD's names: ``cls`` (= ``first``) and ``mean_with_padding``.
Pooling = Literal["auto", "first", "last", "mean", "mean_with_padding", "cls"]


@dataclass
class UniversalKDPrediction(PredictionLoss):
    """UniversalKD's prediction loss with Universal-KD's defaults: ``soft_weight`` 0.5, ``hard_weight`` 0.0; every other field is
    :class:`~lightning_kd.losses.prediction.PredictionLoss`'s. The type of ``UniversalKD.prediction``, so
    a YAML ``prediction:`` block that sets some keys keeps these defaults for the others."""

    soft_weight: float = 0.5
    hard_weight: float = 0.0


class UniversalKD(DistillationModule):
    """Attention over projected teacher layers with an intermediate KL, plus the prediction loss.

    Args:
        gamma: weight of the intermediate KL term (GKD ``--universal_kd_gamma``).
        projection_size: size ``d`` of the common space the layer states are projected into; 0 means
            the student's hidden size (GKD ``--universal_kd_size``).
        layers: ``"intermediate"`` (every layer but embeddings and the last, in both models) or
            ``"final"`` (only the last layer of each; GKD ``--universal_kd_cg``).
        pooling: how a layer's token states become one vector, per model: ``"auto"`` (the first
            token — [CLS] — on encoders, the last real token on causal LMs), ``"first"`` (``"cls"`` is
            its GKD name; refused on causal LMs), ``"last"`` (last real token), ``"mean"`` (mean over
            non-padding tokens) or ``"mean_with_padding"`` (mean over all positions; GKD
            ``--universal_kd_avg``). See :mod:`lightning_kd.core.pooling`.
        prediction: the soft/hard prediction loss (seed: soft KL at ``T = 1`` weighted 0.5, no hard
            term); ``None`` for the intermediate term alone.
        **kwargs: teacher/student/optimizer arguments of :class:`DistillationModule`. The seed
            initialises the student from the teacher's first layers (``student_init: teacher_first``).
    """

    def __init__(
        self,
        *,
        gamma: float = 0.5,
        projection_size: int = 0,
        layers: Layers = "intermediate",
        pooling: Pooling = "auto",
        prediction: UniversalKDPrediction | None = UniversalKDPrediction(),  # noqa: B008 - never mutated
        **kwargs,
    ) -> None:
        super().__init__(prediction=prediction, **kwargs)
        if gamma <= 0:
            raise ValueError(f"gamma must be > 0, got {gamma}; without the intermediate term use KD (or StudentOnly).")
        if projection_size < 0:
            raise ValueError(f"projection_size must be >= 0 (0 = the student's hidden size), got {projection_size}.")
        if layers not in ("intermediate", "final"):
            raise ValueError(f"layers must be 'intermediate' or 'final', got {layers!r}.")
        self.gamma, self.layers, self.pooling = gamma, layers, pooling
        check_pooling(_shared_name(pooling), self.student, self.teachers)

        student_config = self.student.config
        size = projection_size or student_config.hidden_size
        self.student_indices = self._layer_indices(student_config.num_hidden_layers, "the student")
        self.teacher_indices = [
            self._layer_indices(t.config.num_hidden_layers, f"teacher {i}") for i, t in enumerate(self.teachers)
        ]
        self.student_projections = nn.ModuleList(
            nn.Linear(student_config.hidden_size, size, bias=False) for _ in self.student_indices
        )
        self.teacher_projections = nn.ModuleList(
            nn.ModuleList(nn.Linear(t.config.hidden_size, size, bias=False) for _ in indices)
            for t, indices in zip(self.teachers, self.teacher_indices)
        )

    def _layer_indices(self, depth: int, who: str) -> list[int]:
        """Hidden-state indices used for a model of ``depth`` layers."""
        if self.layers == "final":
            return [depth]
        if depth < 2:
            raise ValueError(
                f"layers='intermediate' uses layers 1..L-1, but {who} has {depth} layer(s); use layers='final' or a deeper model."
            )
        return list(range(1, depth))

    #: Every term compares pooled vectors, so a teacher may read another tokenizer.
    per_example_teacher_terms = True

    def student_request(self) -> FeatureRequest:
        return FeatureRequest(hidden_states=True)

    def teacher_request(self, teacher_index: int) -> FeatureRequest:
        return FeatureRequest(hidden_states=True)

    def intermediate_kl(
        self, batch: dict[str, Tensor], student: Features, teacher: Features, teacher_index: int, per_sample: bool = False
    ) -> Tensor:
        """Unweighted intermediate KL with one teacher (scalar, or ``(B,)`` with ``per_sample``)."""
        # Each model pools its own tokens: a teacher may read another tokenizer's encoding of the text.
        s_mode, t_mode = resolve_pair(_shared_name(self.pooling), self.student, self.teachers[teacher_index], teacher_index)
        u = torch.stack(
            [proj(pool(student.hidden_states[i], student.attention_mask, s_mode))
             for proj, i in zip(self.student_projections, self.student_indices)],
            dim=1,
        )
        projections = self.teacher_projections[teacher_index]
        v = torch.stack(
            [
                proj(pool(teacher.hidden_states[j], teacher.attention_mask, t_mode))
                for proj, j in zip(projections, self.teacher_indices[teacher_index])
            ],
            dim=1,
        )
        return attended_kl(u, v, per_sample=per_sample)

    def teacher_terms(
        self, batch: dict[str, Tensor], student: Features, teacher: Features, teacher_index: int
    ) -> dict[str, Tensor]:
        terms = super().teacher_terms(batch, student, teacher, teacher_index)
        terms["intermediate"] = self.gamma * self.intermediate_kl(batch, student, teacher, teacher_index)
        return terms


def _shared_name(pooling: str) -> str:
    """GKD's ``cls`` is the shared ``first``; unknown names are left for :func:`resolve_pooling` to refuse."""
    return "first" if pooling == "cls" else pooling

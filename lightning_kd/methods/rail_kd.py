"""RAIL-KD — Haidar et al. (2022), "RAIL-KD: RAndom Intermediate Layer Mapping for Knowledge
Distillation" (Findings of NAACL 2022).

Each student intermediate layer ``H^S_1 … H^S_{L_S−1}`` is paired with a teacher layer from a
*random* sorted set ``Λ`` of ``L_S − 1`` distinct teacher layers out of ``1 … L_T−1``, re-drawn every
epoch (or every ``n`` steps) by the :class:`~lightning_kd.callbacks.RailKDResampling` callback
(attached by the method, once per epoch as in the paper, unless the trainer has its own); the
embeddings (``H_0``) and last layers (``H_L``) can be added as fixed pairs. Every selected state is
mean-pooled over the sequence, projected to ``u`` dimensions by learnable linear maps (Xavier-normal
weights, zero bias; trained, saved in checkpoints, not exported) and L2-normalised:

* ``variant="concatenated"`` (the paper's RAIL-KD_c, the seed's choice): the ``m`` pooled vectors
  are concatenated, one map ``m·D_S → u`` for the student, one ``m·D_T → u`` per teacher;
* ``variant="layer_wise"`` (RAIL-KD_l): one map ``D → u`` per model applied to every layer, and
  the per-layer distances are weighted by ``layer_weights`` (``α_j``).

``L_RAIL = inter_weight · Σ_b Σ_u (n(z_S) − n(z_T))²`` (summed over the batch, and over layers in
the layer-wise variant), plus the prediction loss. Teachers of another width, and several teachers
(each with its own projection and its own ``Λ``), work.

Where we differ from the GKD reference, and why:

* Pooling averages over real tokens (library policy: padding never dilutes a loss);
  ``pooling="mean_with_padding"`` reproduces the reference's plain mean over all positions. Other
  modes of :mod:`lightning_kd.core.pooling` (``auto``, ``first``, ``last``) pool one token per model.
* ``layer_weights`` (GKD ``--rail_kd_layer_wise_alpha``, which the reference never reads) is applied
  in the layer-wise variant; with the default 1 this is the reference. In the concatenated variant
  per-layer weights have no meaning and any value other than 1 is refused.
* ``Λ`` is drawn from a generator keyed on (seed, epoch or step, teacher), so every DDP rank draws
  the same layers, and the current ``Λ`` is saved in the callback's checkpoint state; the reference
  uses Python's global RNG and loses ``Λ`` on resume. The per-epoch re-draw also works in
  pre-training here (the reference's pre-training loop never advances its epoch counter).
* ``layer_selection="uniform"`` (GKD ``--rail_kd_no_random``) pairs student layer ``j`` with the end
  of the ``j``-th GKD segment (12→6: 2, 4, 6, 8, 10), which equals the reference's stride for
  divisible depths.
"""

from __future__ import annotations

from dataclasses import dataclass

from typing import Literal

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from lightning_kd.callbacks.defaults import unless_configured
from lightning_kd.callbacks.rail_kd_resampling import RailKDResampling
from lightning_kd.core.features import FeatureRequest, Features
from lightning_kd.core.layer_map import uniform_boundaries
from lightning_kd.core.module import DistillationModule
from lightning_kd.core.pooling import PoolingMode, check_pooling, pool, resolve_pair
from lightning_kd.losses.prediction import PredictionLoss
from lightning_kd.losses.rail import BatchReduction, rail_distance

LayerKind = Literal["embedding", "intermediate", "final"]
Variant = Literal["concatenated", "layer_wise"]
LayerSelection = Literal["random", "uniform"]
#: The shared pooling modes plus GKD's ``mean_with_padding``.
Pooling = Literal["mean", "mean_with_padding", "auto", "first", "last"]


@dataclass
class RAILKDPrediction(PredictionLoss):
    """RAILKD's prediction loss with RAIL-KD's paper defaults (three equal weights): ``soft_weight`` 0.3333, ``hard_weight`` 0.3333, ``temperature`` 10.0; every other field is
    :class:`~lightning_kd.losses.prediction.PredictionLoss`'s. The type of ``RAILKD.prediction``, so
    a YAML ``prediction:`` block that sets some keys keeps these defaults for the others."""

    soft_weight: float = 0.3333
    hard_weight: float = 0.3333
    temperature: float = 10.0


class RAILKD(DistillationModule):
    """Random intermediate-layer mapping with pooled, projected, normalised layer states.

    With ``layer_selection="random"`` the teacher layers are drawn by
    :class:`~lightning_kd.callbacks.RailKDResampling`: ``fit`` attaches one drawing once per epoch
    (:meth:`default_callbacks`) unless the trainer's callbacks hold one (then that one drives the run).
    When calling :meth:`compute_losses` directly, call :meth:`resample_teacher_layers` first.

    Args:
        inter_weight: weight of the RAIL loss (GKD ``--rail_kd_inter_rate``).
        projection_size: ``u``, the size of the projected vectors (GKD ``--rail_kd_u``).
        variant: ``"concatenated"`` (GKD ``--rail_kd_concatenated``) or ``"layer_wise"`` (the GKD default).
        layers: which pairs are matched: ``"intermediate"`` (student ``H_1…H_{L_S−1}`` with the drawn
            teacher layers; required), ``"embedding"`` (``H_0`` with ``H_0``; GKD
            ``--rail_kd_has_embed``), ``"final"`` (``H_{L_S}`` with ``H_{L_T}``; GKD ``--rail_kd_has_final``).
        layer_selection: ``"random"`` (re-drawn by the callback) or ``"uniform"`` (fixed GKD
            segment ends; GKD ``--rail_kd_no_random``).
        layer_weights: per-pair weights ``α_j`` in the layer-wise variant: one number for every pair or
            one per pair, in the order embedding, intermediate, final (GKD ``--rail_kd_layer_wise_alpha``).
        pooling: how a layer's sequence becomes one vector, per model: ``"mean"`` over real tokens (the
            paper), ``"mean_with_padding"`` over all positions (GKD), or one token: ``"auto"`` (the
            first on encoders, the last real one on causal LMs), ``"first"`` or ``"last"``. See
            :mod:`lightning_kd.core.pooling`.
        batch_reduction: ``"sum"`` the per-example distances over the batch (GKD) or take their ``"mean"``.
        prediction: the soft/hard prediction loss (seed: ⅓ soft at ``T = 10``, ⅓ hard); ``None`` for
            the RAIL loss alone.
        **kwargs: teacher/student/optimizer arguments of :class:`DistillationModule`.
    """

    #: Its logits are read only by the prediction loss, the hard loss, the strategy and the metrics,
    #: so compact heads compute only the rows those read (DistillationModule.student_logit_rows).
    prediction_only_logits = True
    fused_heads_ready = True  # its terms read logits only through the prediction loss

    def __init__(
        self,
        *,
        inter_weight: float = 0.3333,
        projection_size: int = 128,
        variant: Variant = "concatenated",
        layers: list[LayerKind] = ["intermediate"],  # noqa: B006 - never mutated; a list keeps --help readable
        layer_selection: LayerSelection = "random",
        layer_weights: float | list[float] = 1.0,
        pooling: Pooling = "mean",
        batch_reduction: BatchReduction = "sum",
        prediction: RAILKDPrediction | None = RAILKDPrediction(),  # noqa: B008 - never mutated
        **kwargs,
    ) -> None:
        super().__init__(prediction=prediction, **kwargs)
        if inter_weight <= 0:
            raise ValueError(f"inter_weight must be > 0, got {inter_weight}; without the RAIL loss use KD.")
        if projection_size < 1:
            raise ValueError(f"projection_size (u) must be >= 1, got {projection_size}.")
        if variant not in ("concatenated", "layer_wise"):
            raise ValueError(f"variant must be 'concatenated' or 'layer_wise', got {variant!r}.")
        unknown = set(layers) - {"embedding", "intermediate", "final"}
        if unknown or "intermediate" not in layers:
            raise ValueError(
                f"layers must list 'intermediate' (the randomly mapped pairs) plus optionally 'embedding' and 'final'; got {layers}."
            )
        if layer_selection not in ("random", "uniform"):
            raise ValueError(f"layer_selection must be 'random' or 'uniform', got {layer_selection!r}.")
        if batch_reduction not in ("sum", "mean"):
            raise ValueError(f"batch_reduction must be 'sum' or 'mean', got {batch_reduction!r}.")
        self.inter_weight, self.variant, self.layer_selection = inter_weight, variant, layer_selection
        self.pooling, self.batch_reduction = pooling, batch_reduction
        self.include_embedding, self.include_final = "embedding" in layers, "final" in layers
        check_pooling(pooling, self.student, self.teachers)

        depth = self.student.config.num_hidden_layers
        if depth < 2:
            raise ValueError(f"RAIL-KD maps the student's intermediate layers 1..L-1, but the student has {depth} layer(s).")
        for index, teacher in enumerate(self.teachers):
            if teacher.config.num_hidden_layers < depth:
                raise ValueError(
                    f"Teacher {index} has {teacher.config.num_hidden_layers} layers; RAIL-KD draws {depth - 1} distinct "
                    f"intermediate teacher layers, so every teacher needs at least the student's {depth} layers."
                )
        self.student_indices = [0] * self.include_embedding + list(range(1, depth)) + [depth] * self.include_final
        pairs = len(self.student_indices)
        weights = [float(layer_weights)] * pairs if isinstance(layer_weights, (int, float)) else [float(w) for w in layer_weights]
        if len(weights) != pairs:
            raise ValueError(
                f"layer_weights lists {len(weights)} weights for {pairs} layer pairs; give one number or one per pair."
            )
        if variant == "concatenated" and any(w != 1.0 for w in weights):
            raise ValueError(
                "layer_weights weigh per-layer distances of the layer-wise variant; use variant='layer_wise' or leave them at 1."
            )
        self.register_buffer("layer_weights", torch.tensor(weights), persistent=False)

        fan = pairs if variant == "concatenated" else 1
        self.student_projection = _xavier_linear(fan * self.student.config.hidden_size, projection_size)
        self.teacher_projections = nn.ModuleList(
            _xavier_linear(fan * t.config.hidden_size, projection_size) for t in self.teachers
        )
        #: Intermediate teacher hidden-state indices ``Λ`` per teacher (set by the callback when random).
        self.teacher_layers: list[list[int]] | None = None
        if layer_selection == "uniform":
            self.teacher_layers = [uniform_boundaries(t.config.num_hidden_layers, depth)[1:depth] for t in self.teachers]

    # ------------------------------------------------------------------ the teacher layers Λ
    def draw_teacher_layers(self, generator: torch.Generator) -> list[list[int]]:
        """A fresh ``Λ`` per teacher: ``L_S − 1`` distinct sorted layers out of ``1 … L_T−1``."""
        count = self.student.config.num_hidden_layers - 1
        drawn = []
        for teacher in self.teachers:
            candidates = torch.randperm(teacher.config.num_hidden_layers - 1, generator=generator)[:count] + 1
            drawn.append(sorted(candidates.tolist()))
        return drawn

    def set_teacher_layers(self, layers: list[list[int]]) -> None:
        """Use ``layers`` (one sorted list per teacher) as ``Λ`` from now on."""
        count = self.student.config.num_hidden_layers - 1
        if len(layers) != len(self.teachers):
            raise ValueError(f"Got teacher layers for {len(layers)} teachers, the method has {len(self.teachers)}.")
        for index, (chosen, teacher) in enumerate(zip(layers, self.teachers)):
            top = teacher.config.num_hidden_layers - 1
            if len(chosen) != count or len(set(chosen)) != count or not all(1 <= j <= top for j in chosen):
                raise ValueError(f"Teacher {index} needs {count} distinct layers in 1..{top}, got {chosen}.")
        self.teacher_layers = [sorted(int(j) for j in chosen) for chosen in layers]

    def resample_teacher_layers(self, generator: torch.Generator | None = None) -> list[list[int]]:
        """Draw and use a new ``Λ`` (what the callback does each epoch); returns it."""
        self.set_teacher_layers(self.draw_teacher_layers(generator or torch.Generator().manual_seed(0)))
        return self.teacher_layers

    def teacher_indices(self, teacher_index: int) -> list[int]:
        """Teacher hidden-state indices paired with :attr:`student_indices`, in order."""
        if self.teacher_layers is None:
            raise RuntimeError(
                "RAIL-KD has no teacher layers drawn yet: a Trainer fit draws them (RailKDResampling, attached by "
                "default); call `method.resample_teacher_layers()` before calling compute_losses directly."
            )
        depth = self.teachers[teacher_index].config.num_hidden_layers
        return [0] * self.include_embedding + self.teacher_layers[teacher_index] + [depth] * self.include_final

    # ------------------------------------------------------------------ the loss
    #: Every term compares pooled vectors, so a teacher may read another tokenizer.
    per_example_teacher_terms = True

    def student_request(self) -> FeatureRequest:
        return FeatureRequest(hidden_states=True)

    def teacher_request(self, teacher_index: int) -> FeatureRequest:
        return FeatureRequest(hidden_states=True)

    def project(self, states: list[Tensor], projection: nn.Linear, mask: Tensor | None, mode: PoolingMode) -> Tensor:
        """Pool each ``(B, N, D)`` state (``mode``, resolved for the model; in float32) and project:
        ``(B, u)`` concatenated or ``(B, m, u)`` layer-wise."""
        pooled = torch.stack([pool(h.float(), mask, mode) for h in states], dim=1)  # (B, m, D)
        if self.variant == "concatenated":
            return projection(pooled.flatten(1))
        return projection(pooled)

    def rail_loss(
        self, batch: dict[str, Tensor], student: Features, teacher: Features, teacher_index: int, per_sample: bool = False
    ) -> Tensor:
        """Unweighted RAIL distance with one teacher (scalar, or ``(B,)`` with ``per_sample``)."""
        # Each model pools its own tokens: a teacher may read another tokenizer's encoding of the text.
        s_mode, t_mode = resolve_pair(self.pooling, self.student, self.teachers[teacher_index], teacher_index)
        z_s = self.project([student.hidden_states[i] for i in self.student_indices], self.student_projection,
                           student.attention_mask, s_mode)
        z_t = self.project(
            [teacher.hidden_states[j] for j in self.teacher_indices(teacher_index)],
            self.teacher_projections[teacher_index],
            teacher.attention_mask,
            t_mode,
        )
        weights = self.layer_weights if self.variant == "layer_wise" else None
        return rail_distance(z_s, z_t, weights, self.batch_reduction, per_sample=per_sample)

    def teacher_terms(
        self, batch: dict[str, Tensor], student: Features, teacher: Features, teacher_index: int
    ) -> dict[str, Tensor]:
        terms = super().teacher_terms(batch, student, teacher, teacher_index)
        terms["rail"] = self.inter_weight * self.rail_loss(batch, student, teacher, teacher_index)
        return terms

    # ------------------------------------------------------------------ schedule
    def default_callbacks(self) -> list[pl.Callback]:
        """What ``fit`` attaches when the trainer has none: with random layers, a fresh ``Λ`` at the
        start of every epoch (the paper; GKD ``--rail_kd_epochs=1``). Fixed layers need nothing."""
        return [RailKDResampling(every_n_epochs=1)] if self.layer_selection == "random" else []

    def configure_callbacks(self) -> list[pl.Callback]:
        return [*super().configure_callbacks(), *unless_configured(self, self.default_callbacks())]


def _xavier_linear(fan_in: int, fan_out: int) -> nn.Linear:
    layer = nn.Linear(fan_in, fan_out)
    nn.init.xavier_normal_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer

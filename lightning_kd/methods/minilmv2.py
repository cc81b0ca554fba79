"""MiniLMv2 — Wang et al. (2021), "MiniLMv2: Multi-Head Self-Attention Relation Distillation for
Compressing Pretrained Transformers".

The student's **last** layer matches one teacher layer through self-attention *relations*: the
Q, K and V projections (before the head split) of both models are cut into ``A_r`` relation heads,
and for each ``R ∈ {Q, K, V}`` the loss is the row-wise
``KL(softmax(R_T R_Tᵀ/√(d_T/A_r)) ‖ softmax(R_S R_Sᵀ/√(d_S/A_r)))``, averaged over
``B·A_r·N`` rows. The three relations are summed with weight 1 each. Relation heads only need to
divide both widths, so teacher and student may differ in width *and* attention heads. No learnable
part, no temperature, no prediction loss by default (GKD pre-trains with this loss alone).

Where we differ from the GKD reference, and why:

* ``teacher_layer`` defaults to ``-1`` (the teacher's last layer); the reference's default ``12`` is
  the last layer only of a 12-layer teacher. The GKD presets set ``12`` explicitly; the paper
  recommends an upper-middle layer for 24-layer teachers.
* A ``relation_heads`` value that does not divide a width raises an error naming valid values
  (the reference fails inside a reshape).
* ``mask_padding=True`` (off by default, for parity) drops padded keys from the relation softmax
  and padded query rows from the mean; the reference includes padding. ``padded_queries="keep"``
  keeps the padded query rows in the mean (their relations over the real keys), as PaddleNLP's
  MiniLMv2 does (it adds the additive key mask to both relation logits and averages every row).
"""

from __future__ import annotations

import math
from typing import Literal

from torch import Tensor, nn

from lightning_kd.core.features import FeatureRequest, Features, shared_key_mask
from lightning_kd.core.method_settings import method_settings
from lightning_kd.core.module import DistillationModule
from lightning_kd.losses.attention import relation_kl, split_relation_heads
from lightning_kd.losses.prediction import PredictionLoss
from lightning_kd.stages.positions import term_positions

PaddedQueries = Literal["drop", "keep"]
_RELATIONS = (("query_relation", "queries"), ("key_relation", "keys"), ("value_relation", "values"))


def check_minilmv2_settings(settings: MiniLMv2Settings) -> None:
    """Refuse an unknown ``padded_queries`` and ``"keep"`` without ``mask_padding`` (run on every :data:`MiniLMv2Settings`)."""
    if settings.padded_queries not in ("drop", "keep"):
        raise ValueError(f"padded_queries must be 'drop' or 'keep', got {settings.padded_queries!r}.")
    if settings.padded_queries == "keep" and not settings.mask_padding:
        raise ValueError(
            "padded_queries='keep' keeps padded query rows of a padding-masked relation; without mask_padding every "
            "row and key already counts. Set mask_padding=True, or leave padded_queries at 'drop'."
        )


def per_teacher(value: int | list[int], count: int, name: str) -> list[int]:
    """Broadcast an int to ``count`` teachers, or check that a list has one entry per teacher."""
    if isinstance(value, int):
        return [value] * count
    if len(value) != count:
        raise ValueError(f"{name} lists {len(value)} values for {count} teachers; give one value, or one per teacher.")
    return [int(v) for v in value]


def resolve_teacher_layer(teacher_layer: int, teacher_layers: int) -> int:
    """0-based index of a 1-based (negative: from the end) teacher layer.

    Raises:
        ValueError: ``teacher_layer`` is 0 or outside ``−L_T … L_T``.
    """
    if teacher_layer == 0 or abs(teacher_layer) > teacher_layers:
        raise ValueError(
            f"teacher_layer={teacher_layer} does not exist in a {teacher_layers}-layer teacher: use 1..{teacher_layers} "
            f"(1-based) or -1..-{teacher_layers} (from the end; -1 = last layer)."
        )
    return teacher_layer - 1 if teacher_layer > 0 else teacher_layers + teacher_layer


def check_relation_heads(heads: int, student_width: int, teacher_width: int, teacher_index: int) -> None:
    """Raise a ``ValueError`` naming valid values when ``heads`` does not divide both widths."""
    if heads >= 1 and student_width % heads == 0 and teacher_width % heads == 0:
        return
    common = math.gcd(student_width, teacher_width)
    valid = [d for d in range(common, 0, -1) if common % d == 0][:4]
    raise ValueError(
        f"relation_heads={heads} must divide both the student width {student_width} and teacher {teacher_index}'s "
        f"width {teacher_width}; valid values divide {common}, e.g. {', '.join(map(str, valid))}."
    )


class MiniLMv2Intermediate(nn.Module):
    """MiniLMv2's Q/K/V relation loss; shared by :class:`MiniLMv2` and MixBaseline.

    Args:
        settings: the knobs.
        student_config: the student's HF config.
        teacher_configs: each teacher's HF config.

    Raises:
        ValueError: ``teacher_layer`` outside a teacher's depth, or ``relation_heads`` not dividing a width.
    """

    def __init__(self, settings: MiniLMv2Settings, student_config, teacher_configs: list) -> None:
        super().__init__()
        self.settings = settings
        count = len(teacher_configs)
        self.relation_heads = per_teacher(settings.relation_heads, count, "relation_heads")
        layers = per_teacher(settings.teacher_layer, count, "teacher_layer")
        self.teacher_layers = [resolve_teacher_layer(l, c.num_hidden_layers) for l, c in zip(layers, teacher_configs)]
        for index, (heads, config) in enumerate(zip(self.relation_heads, teacher_configs)):
            check_relation_heads(heads, student_config.hidden_size, config.hidden_size, index)
        self.student_layer = student_config.num_hidden_layers - 1

    def student_request(self) -> FeatureRequest:
        return FeatureRequest(qkv_layers=frozenset({self.student_layer}))

    def teacher_request(self, teacher_index: int) -> FeatureRequest:
        return FeatureRequest(qkv_layers=frozenset({self.teacher_layers[teacher_index]}))

    def forward(self, batch: dict[str, Tensor], student: Features, teacher: Features, teacher_index: int) -> dict[str, Tensor]:
        """``{"query_relation", "key_relation", "value_relation"}`` against one teacher (unweighted)."""
        s, t = self.student_layer, self.teacher_layers[teacher_index]
        heads, mask_padding = self.relation_heads[teacher_index], self.settings.mask_padding
        mask = term_positions(batch)
        if mask_padding and mask is None:
            raise ValueError("MiniLMv2 mask_padding=True needs an attention_mask in the batch.")
        keys = shared_key_mask(student, s, teacher, t)
        return {
            name: relation_kl(
                split_relation_heads(getattr(student, field)[s], heads),
                split_relation_heads(getattr(teacher, field)[t], heads),
                mask,
                mask_padding=mask_padding,
                key_mask=keys,
                mask_queries=(self.settings.padded_queries == "drop") if mask_padding else None,
            )
            for name, field in _RELATIONS
        }


class MiniLMv2(DistillationModule):
    """MiniLMv2 multi-head self-attention relation distillation (both stages; GKD uses pre-training).

    Args:
        relation_heads: number of relation heads ``A_r``; must divide the student's and each
            teacher's width (48 suits 384/768-wide models, 64 a 1024-wide teacher). A list gives one
            value per teacher (GKD ``--minilmv2_relation_heads_mt``).
        teacher_layer: the teacher layer to match, 1-based; negative counts from the end
            (``-1`` = last). A list gives one value per teacher.
        mask_padding: leave padding out of the relation softmax and the mean (off = GKD parity).
        padded_queries: with ``mask_padding``, ``"drop"`` padded query rows from the mean (default) or
            ``"keep"`` them (PaddleNLP's implementation: padded keys masked, every query row averaged).
        prediction: an optional prediction-level loss added to the relation terms (``None``: none,
            as in the paper and GKD).
        **kwargs: teacher/student/optimizer arguments of :class:`DistillationModule`.

    Raises:
        ValueError: see :class:`MiniLMv2Intermediate`.
    """

    #: Its logits are read only by the prediction loss, the hard loss, the strategy and the metrics,
    #: so compact heads compute only the rows those read (DistillationModule.student_logit_rows).
    prediction_only_logits = True
    fused_heads_ready = True  # its terms read logits only through the prediction loss

    def __init__(
        self,
        *,
        relation_heads: int | list[int] = 48,
        teacher_layer: int | list[int] = -1,
        mask_padding: bool = False,
        padded_queries: PaddedQueries = "drop",
        prediction: PredictionLoss | None = None,
        **kwargs,
    ) -> None:
        super().__init__(prediction=prediction, **kwargs)
        settings = MiniLMv2Settings.from_arguments(locals())
        self.intermediate = MiniLMv2Intermediate(settings, self.student.config, [t.config for t in self.teachers])


#: MiniLMv2's arguments (``relation_heads``, ``teacher_layer``, ``mask_padding``, ``padded_queries``)
#: as one object: what :class:`MiniLMv2Intermediate` is built from, and MixBaseline's ``minilmv2`` block.
MiniLMv2Settings = method_settings(MiniLMv2, "MiniLMv2Settings", check=check_minilmv2_settings)

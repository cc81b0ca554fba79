"""MiniLM (v1) — Wang et al. (2020), "MiniLM: Deep Self-Attention Distillation for Task-Agnostic
Compression of Pre-Trained Transformers".

The student's **last** layer matches the teacher's last layer in two ways, per head:

* attention transfer: ``KL(A_T ‖ A_S)`` between the attention distributions of every query row;
* value relation: ``KL(softmax(V_T V_Tᵀ/√d_h^T) ‖ softmax(V_S V_Sᵀ/√d_h^S))``.

Head counts must match; head sizes (widths) may differ. There is no learnable part, no temperature
and no prediction loss by default (GKD pre-trains with these two terms only, then fine-tunes plainly).

Where we differ from the GKD reference, and why:

* Attention term: the reference passes attention *probabilities* into a KL that applies softmax
  again (a double softmax: nearly uniform rows, a weak squared-error-like signal). We compute the
  paper's KL from the padding-masked pre-softmax scores with ``log_softmax``.
  ``gkd_double_softmax=True`` restores the reference form.
* ``mask_padding=True`` (off by default, like the reference) also drops padded keys from the
  value-relation softmax and padded query rows from both means.
"""

from __future__ import annotations

from torch import Tensor, nn

from lightning_kd.core.features import FeatureRequest, Features, shared_key_mask
from lightning_kd.core.method_settings import method_settings
from lightning_kd.core.module import DistillationModule
from lightning_kd.losses.attention import (
    attention_kl,
    attention_probs_double_softmax_kl,
    relation_kl,
)
from lightning_kd.losses.prediction import PredictionLoss
from lightning_kd.stages.positions import term_positions


class MiniLMIntermediate(nn.Module):
    """MiniLM's last-layer attention and value-relation loss; shared by :class:`MiniLM` and MixBaseline.

    Args:
        settings: the knobs.
        student_config: the student's HF config.
        teacher_configs: each teacher's HF config.

    Raises:
        ValueError: a teacher's head count differs from the student's.
    """

    def __init__(self, settings: MiniLMSettings, student_config, teacher_configs: list) -> None:
        super().__init__()
        self.settings = settings
        for index, config in enumerate(teacher_configs):
            if config.num_attention_heads != student_config.num_attention_heads:
                raise ValueError(
                    f"MiniLM matches attention and value relations head by head, but teacher {index} has "
                    f"{config.num_attention_heads} heads and the student {student_config.num_attention_heads}. "
                    "Use a student with as many heads (or MiniLMv2, whose relation heads are free)."
                )
        self.student_layer = student_config.num_hidden_layers - 1
        self.teacher_layers = [c.num_hidden_layers - 1 for c in teacher_configs]

    def student_request(self) -> FeatureRequest:
        return FeatureRequest(qkv_layers=frozenset({self.student_layer}))

    def teacher_request(self, teacher_index: int) -> FeatureRequest:
        return FeatureRequest(qkv_layers=frozenset({self.teacher_layers[teacher_index]}))

    def forward(self, batch: dict[str, Tensor], student: Features, teacher: Features, teacher_index: int) -> dict[str, Tensor]:
        """``{"attention", "value_relation"}`` against one teacher (unweighted)."""
        s, t = self.student_layer, self.teacher_layers[teacher_index]
        mask, mask_padding = term_positions(batch), self.settings.mask_padding
        if mask_padding and mask is None:
            raise ValueError("MiniLM mask_padding=True needs an attention_mask in the batch.")
        keys = shared_key_mask(student, s, teacher, t)
        if self.settings.gkd_double_softmax:
            attention = attention_probs_double_softmax_kl(
                student.attention_probs(s), teacher.attention_probs(t), mask, mask_queries=mask_padding
            )
        else:
            attention = attention_kl(
                student.attention_scores(s), teacher.attention_scores(t), mask, mask_queries=mask_padding, key_mask=keys
            )
        values = relation_kl(
            student.split_heads(student.values[s]),
            teacher.split_heads(teacher.values[t]),
            mask,
            mask_padding=mask_padding,
            key_mask=keys,
        )
        return {"attention": attention, "value_relation": values}


class MiniLM(DistillationModule):
    """MiniLM deep self-attention distillation of the last layer (both stages; GKD uses pre-training).

    Args:
        gkd_double_softmax: compute the attention term as the GKD reference does (softmax applied to
            the attention probabilities again) instead of the paper's KL (parity only).
        mask_padding: leave padded query rows out of both terms and padded keys out of the
            value-relation softmax (padded keys never carry attention probability either way).
        prediction: an optional prediction-level loss added to the two terms (``None``: none, as in
            the paper and GKD).
        **kwargs: teacher/student/optimizer arguments of :class:`DistillationModule`.

    Raises:
        ValueError: the teacher's head count differs from the student's.
    """

    #: Its logits are read only by the prediction loss, the hard loss, the strategy and the metrics,
    #: so compact heads compute only the rows those read (DistillationModule.student_logit_rows).
    prediction_only_logits = True
    fused_heads_ready = True  # its terms read logits only through the prediction loss

    def __init__(
        self,
        *,
        gkd_double_softmax: bool = False,
        mask_padding: bool = False,
        prediction: PredictionLoss | None = None,
        **kwargs,
    ) -> None:
        super().__init__(prediction=prediction, **kwargs)
        settings = MiniLMSettings.from_arguments(locals())
        self.intermediate = MiniLMIntermediate(settings, self.student.config, [t.config for t in self.teachers])


#: MiniLM's arguments (``gkd_double_softmax``, ``mask_padding``) as one object: what
#: :class:`MiniLMIntermediate` is built from, and MixBaseline's ``minilm`` block.
MiniLMSettings = method_settings(MiniLM, "MiniLMSettings")

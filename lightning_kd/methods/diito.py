"""DIITO — Wu et al. (2022), "Causal Distillation for Language Models", NAACL 2022
(Distillation Interchange Intervention Training Objective).

Pre-training only. Each step runs student and teacher twice on the same batch:

* pass 0 (normal): the prediction loss, ``prediction.hard_weight``·MLM +
  ``prediction.soft_weight``·T²·KL(student ‖ teacher logits), + ``cosine_weight``·(1 − cos)
  between the last hidden states (this needs equal widths);
* pass 1 (counterfactual): at the aligned sites, the activations of example ``b`` at some positions
  are replaced by pass 0's activations of its source example ``b+1`` (cyclic) at other positions —
  in the student *and* in the teacher — and ``causal_soft_weight``·T²·KL +
  ``causal_cosine_weight``·(1 − cos) compare the intervened outputs. The student's source
  activations keep their graph, so the counterfactual loss also trains pass 0.

Pass 0's soft and MLM terms are a plain prediction loss, so they are the ``prediction:`` block every
method shares (its temperature and positions also serve the causal soft term). The causal terms and
the cosine terms are not: they compare the outputs of an intervened pass, or hidden states, so their
weights (``causal_soft_weight``, ``cosine_weight``, ``causal_cosine_weight``) and the cosine
``reduction`` stay DIITO's own arguments.

Alignment sites (hidden-state indices, 1 = first layer's output): ``full`` draws a student layer
``ℓ`` per optimizer step (shared by both passes and all micro-batches) and aligns it with the
teacher block ``(ℓ−1)r+1 … ℓr`` (``r = L_T/L_S``, so the depths must divide); ``middle`` aligns
``⌊L_S/2⌋+1`` with ``⌊L_T/2⌋+1``; ``late`` aligns the last two layers of each model.

Deliberate choices and differences from the GKD reference:

* The swap replaces the *layer output* (the residual stream of post-LN BERT, via a forward hook on
  the encoder layer). The reference swaps GLM's LayerNorm-ed attention input of the next layer,
  which is a full swap only at the final output; the residual stream is what the paper describes.
  No parity knob for the attention-input site is offered.
* ``interchange_way="masked"`` is not offered: the reference passes the padding mask instead of the
  MLM mask, so it does not do what its name says. ``"random"`` keeps the reference's behaviour of
  drawing from the whole padded length.
* The defaults are the seed's values (α = 0.25, 0.25, 0.25, 0.25, 0; T = 2), not the reference's
  all-1.0.
* ``reduction="gkd"`` reproduces the reference's normalisations (soft KL divided by all positions,
  padding rows counted as distance 1 in the cosine term); the default averages over kept rows.
* Activation (gradient) checkpointing is refused: pass 1 injects pass-0 tensors through a hook
  inside the checkpointed layer, so a checkpointed layer would recompute its forward during the
  backward without the hook (wrong activations) and reentrant checkpointing would not route
  gradients to the injected source tensors. The reference silently detaches the source then,
  changing the objective; we raise instead.
* The ``full`` layer draw depends on the global step only (not on a seed), so every rank agrees.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from lightning_kd.core.features import FeatureRequest, Features, capture
from lightning_kd.core.module import DistillationModule
from lightning_kd.core.passes import total_loss
from lightning_kd.core.terms import LossTerms
from lightning_kd.losses.interchange import (
    Interchange,
    InterchangeWay,
    apply_interchange,
    cosine_rows,
    layer_draw,
    sample_interchange,
    source_values,
    teacher_block,
)
from lightning_kd.losses.masking import Reduction
from lightning_kd.losses.prediction import PredictionLoss
from lightning_kd.models.layer_stack import find_layer_stack
from lightning_kd.models.loading import is_activation_checkpointing
from lightning_kd.stages.positions import term_positions

Alignment = Literal["full", "middle", "late"]


@dataclass
class DIITOPrediction(PredictionLoss):
    """DIITO's pass-0 prediction loss with the seed's defaults: ``0.25``·T²·KL at ``T = 2`` on the MLM
    targets + ``0.25``·MLM; every other field is :class:`~lightning_kd.losses.prediction.PredictionLoss`'s.
    The type of ``DIITO.prediction``, so a YAML ``prediction:`` block that sets some keys keeps these
    defaults for the others."""

    soft_weight: float = 0.25
    hard_weight: float = 0.25
    temperature: float = 2.0


#: DIITO's default pass-0 prediction loss (start from it in Python: ``replace(DIITO_PREDICTION, temperature=4.0)``).
DIITO_PREDICTION = DIITOPrediction()


class DIITO(DistillationModule):
    """Causal distillation by interchange intervention (pre-training).

    Args:
        alignment: ``"full"`` (a student layer drawn per step, aligned with its teacher block),
            ``"middle"`` or ``"late"`` (GKD ``--diito_alignment``).
        interchange_prop: fraction of the shorter example's tokens swapped (GKD ``--diito_interchange_prop``).
        interchange_way: ``"consecutive"`` (a contiguous block) or ``"random"`` (positions anywhere in the
            padded length) (GKD ``--diito_interchange_way``).
        interchange_max_token: cap on swapped tokens per example; ``None`` = no cap (GKD ``-1``).
        causal_soft_weight: weight of ``T²``·KL between the intervened logits (GKD ``--diito_alpha_causal_ce``);
            its temperature, positions and reduction are ``prediction``'s.
        cosine_weight: weight of the last-hidden-state cosine distance in pass 0 (GKD ``--diito_alpha_cos``).
        causal_cosine_weight: the same for the intervened pass (GKD ``--diito_alpha_causal_cos``).
        reduction: of the cosine terms: ``"masked_mean"`` or ``"gkd"`` (reference normalisation, for parity).
        prediction: pass 0's soft and MLM terms: ``soft_weight`` (GKD ``--diito_alpha_ce``, 0.25),
            ``hard_weight`` (the MLM loss, GKD ``--diito_alpha_mlm``, 0.25), ``temperature`` (GKD
            ``--distill_temperature``, 2), ``soft_positions``: ``"masked_tokens"`` (MLM targets) or
            ``"all_tokens"`` (every non-padding token, GKD ``--distill_only_mask_pad``), ``reduction``
            (``"gkd"`` for parity).
        **kwargs: teacher/student/optimizer arguments of :class:`DistillationModule` (``forward_repeats`` may
            be 1 (GKD ``--forward_repeat_num=1``) or left at its default: the method always runs its two passes).
    """

    #: The interchange pass runs the teacher with hooks from inside the method's step.
    reads_teacher_weights = True
    #: Why a teacher cache cannot serve DIITO (read by :mod:`lightning_kd.cache.compatibility`).
    teacher_inputs_vary: ClassVar[str | None] = (
        "its teacher also runs an interchange-intervened pass that depends on the step's random swap"
    )
    #: Pass 0's logits are read by the soft and hard terms only, pass 1's by the causal soft term only,
    #: so compact heads compute only those rows (see :meth:`compute_losses`).
    prediction_only_logits = True
    fused_heads_ready = True  # both passes read logits only through prediction losses
    #: Arguments of earlier releases and where they are now (the CLI's "did you mean" reads it).
    moved_arguments: ClassVar[dict[str, str]] = {"mlm_weight": "prediction.hard_weight"}

    def __init__(
        self,
        *,
        alignment: Alignment = "full",
        interchange_prop: float = 0.3,
        interchange_way: InterchangeWay = "consecutive",
        interchange_max_token: int | None = None,
        causal_soft_weight: float = 0.25,
        cosine_weight: float = 0.25,
        causal_cosine_weight: float = 0.0,
        reduction: Reduction = "masked_mean",
        prediction: DIITOPrediction = DIITO_PREDICTION,
        **kwargs,
    ) -> None:
        repeats = kwargs.pop("forward_repeats", 1)
        if repeats not in (0, 1):  # 0 is the base default (the CLI passes it), 1 the seed's value
            raise ValueError(f"DIITO always runs two passes (normal and intervened); set forward_repeats to 1, got {repeats}.")
        if prediction is None:
            raise ValueError("DIITO's pass 0 is its prediction loss: give `prediction` (set its weights to 0 to turn terms off), not None.")
        weights = {"prediction.hard_weight": prediction.hard_weight, "prediction.soft_weight": prediction.soft_weight,
                   "causal_soft_weight": causal_soft_weight, "cosine_weight": cosine_weight, "causal_cosine_weight": causal_cosine_weight}
        bad = {k: v for k, v in weights.items() if v < 0}
        if bad:
            raise ValueError(f"DIITO weights must be >= 0 (0 turns a term off), got {bad}.")
        if prediction.soft_positions not in ("masked_tokens", "all_tokens"):
            raise ValueError(f"prediction.soft_positions must be 'masked_tokens' or 'all_tokens', got {prediction.soft_positions!r}.")
        super().__init__(prediction=prediction, forward_repeats=1, **kwargs)
        if not self.task_stage.token_level:
            raise ValueError(
                "DIITO is a pre-training method: use MLM models with PretrainDataModule (task_head='masked_lm') or "
                "decoder LMs with CausalLMDataModule (task_head='causal_lm'); fine-tune afterwards with StudentOnly."
            )
        if self.random_inputs is not None:
            raise ValueError("DIITO's interchange needs the real batch in both passes; remove random_inputs.")
        if not 0 < interchange_prop <= 1:
            raise ValueError(f"interchange_prop must be in (0, 1], got {interchange_prop}.")
        if interchange_max_token is not None and interchange_max_token < 1:
            raise ValueError(f"interchange_max_token must be >= 1 or null (no cap; GKD -1), got {interchange_max_token}.")
        if interchange_way not in ("consecutive", "random"):
            raise ValueError(
                f"interchange_way must be 'consecutive' or 'random', got {interchange_way!r} "
                "(the reference's 'masked' mode reads the padding mask and is not offered)."
            )
        if alignment not in ("full", "middle", "late"):
            raise ValueError(f"alignment must be 'full', 'middle' or 'late', got {alignment!r}.")
        if max(weights.values()) == 0:
            raise ValueError("Every DIITO weight is 0: nothing to train.")
        self.causal_prediction = replace(prediction, soft_weight=causal_soft_weight, hard_weight=0.0)
        self.alignment, self.interchange_prop = alignment, interchange_prop
        self.interchange_way, self.interchange_max_token = interchange_way, interchange_max_token
        self.cosine_weight, self.causal_cosine_weight = cosine_weight, causal_cosine_weight
        self.reduction = reduction
        student_depth, student_width = self.student.config.num_hidden_layers, self.student.config.hidden_size
        find_layer_stack(self.student)  # a model whose layers cannot be hooked is refused here, not at a step
        for index, teacher in enumerate(self.teachers):
            depth, width = teacher.config.num_hidden_layers, teacher.config.hidden_size
            find_layer_stack(teacher)
            if alignment == "full" and depth % student_depth:
                raise ValueError(
                    f"alignment='full' aligns each student layer with a block of L_T/L_S teacher layers, but teacher {index} "
                    f"has {depth} layers and the student {student_depth}; use a student depth dividing {depth} or alignment 'middle'/'late'."
                )
            if alignment == "late" and min(depth, student_depth) < 2:
                raise ValueError("alignment='late' swaps the last two layers: student and teachers need >= 2 layers.")
            if (cosine_weight > 0 or causal_cosine_weight > 0) and width != student_width:
                raise ValueError(
                    f"The cosine terms compare last hidden states, so the widths must match: teacher {index} has "
                    f"{width}, the student {student_width}. Set cosine_weight and causal_cosine_weight to 0 or use an equal-width student."
                )
        self._refuse_checkpointing()

    # ------------------------------------------------------------------ guards
    def _refuse_checkpointing(self) -> None:
        if is_activation_checkpointing(self.student):
            raise ValueError(
                "DIITO cannot run with gradient (activation) checkpointing: the intervened pass injects pass-0 "
                "activations through a hook inside each checkpointed layer, which the recomputation in the backward "
                "would not see (and reentrant checkpointing would not send gradients to them). Set "
                "activation_checkpointing: false (or call student.gradient_checkpointing_disable())."
            )

    def on_fit_start(self) -> None:
        self._refuse_checkpointing()

    # ------------------------------------------------------------------ sites
    def alignment_sites(self, teacher_index: int, student_layer: int | None = None) -> tuple[list[int], list[int]]:
        """``(student_sites, teacher_sites)``: hidden-state indices swapped in pass 1 (``student_layer``
        is ``ℓ`` of ``alignment="full"``; drawn from the global step when omitted)."""
        s_depth = self.student.config.num_hidden_layers
        t_depth = self.teachers[teacher_index].config.num_hidden_layers
        if self.alignment == "full":
            layer = student_layer if student_layer is not None else layer_draw(self.global_step, s_depth)
            return [layer], teacher_block(layer, t_depth, s_depth)
        if self.alignment == "middle":
            return [s_depth // 2 + 1], [t_depth // 2 + 1]
        return [s_depth - 1, s_depth], [t_depth - 1, t_depth]

    def draw_interchange(self, batch: dict[str, Tensor]) -> Interchange:
        """The positions swapped for this batch (global RNG, so ``seed_everything`` fixes them)."""
        real = batch.get("attention_mask")
        if real is None:  # packed blocks without padding
            real = torch.ones_like(batch["input_ids"])
        return sample_interchange(real, self.interchange_prop, self.interchange_way, self.interchange_max_token)

    @contextmanager
    def interchanged(self, model: nn.Module, sites: list[int], values: dict[int, Tensor], swap: Interchange) -> Iterator[None]:
        """While active, ``model``'s hidden state ``site`` gets ``values[site]`` at the swap's base positions
        (an intervention for :meth:`~lightning_kd.core.module.DistillationModule.run_pass`)."""
        stack = find_layer_stack(model)
        handles = []
        for site in sites:
            # Hidden state `site` is the output of layer application site − 1. A shared module (ALBERT)
            # runs several applications, so the hook counts its calls and intervenes at the right one.
            slot = stack.slots[site - 1]
            wanted, calls = stack.slots[: site - 1].count(slot), [0]

            def hook(_module, _inputs, output, site=site, wanted=wanted, calls=calls):
                calls[0] += 1
                if calls[0] - 1 != wanted:
                    return None
                if isinstance(output, tuple):
                    return (apply_interchange(output[0], swap, values[site]), *output[1:])
                return apply_interchange(output, swap, values[site])
            handles.append(stack.modules[slot].register_forward_hook(hook))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def intervened(self, model: nn.Module, batch: dict[str, Tensor], sites: list[int], values: dict[int, Tensor],
                   swap: Interchange, request: FeatureRequest, **kwargs) -> Features:
        """``model``'s features when hidden state ``site`` gets ``values[site]`` at the swap's base positions."""
        with self.interchanged(model, sites, values, swap):
            return capture(model, batch, request, **kwargs)

    # ------------------------------------------------------------------ the step
    def student_request(self) -> FeatureRequest:
        # Pass 0 reads hidden states: the interchange's source activations and the cosine term's last one.
        return FeatureRequest(hidden_states=True)

    def teacher_request(self, teacher_index: int) -> FeatureRequest:
        return FeatureRequest(hidden_states=True)

    def intervened_request(self) -> FeatureRequest:
        """What pass 1 captures of each model: the last hidden state for the causal cosine term only,
        and the token-logit rows of the causal soft term (none when it is off)."""
        rows = self.causal_prediction.logit_rows() if self.compact_heads else "all"
        return FeatureRequest(hidden_states=self.causal_cosine_weight > 0, logit_rows=rows, head_rows=self.fused_heads())

    def compute_losses(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Pass 0 and the intervened pass 1 of student and teachers (two :meth:`run_pass` calls); the
        terms of both, each teacher's combined once by the multi-teacher strategy.

        Pass 0 is the normal pass; its teacher terms also keep each teacher's source activations at
        its sites. Pass 1 swaps those in (:meth:`interchanged`) and computes the causal terms; the
        student's sources keep their graph, so the causal terms train pass 0 too. Each pass projects
        only the token-logit rows its terms read: pass 0 the soft term's positions (and the labelled
        rows of the MLM loss), pass 1 the causal soft term's (none when it is off).
        """
        layer = layer_draw(self.global_step, self.student.config.num_hidden_layers) if self.alignment == "full" else None
        swap = self.draw_interchange(batch)
        teacher_sources: dict[int, dict[int, Tensor]] = {}

        def terms_keeping_sources(batch: dict[str, Tensor], student: Features, teacher: Features, index: int) -> dict[str, Tensor]:
            sites = self.alignment_sites(index, layer)[1]
            teacher_sources[index] = {site: source_values(teacher.hidden_states[site], swap) for site in sites}
            return self.normal_terms(batch, student, teacher)

        normal = self.run_pass(batch, pass_index=0, teacher_terms=terms_keeping_sources, combine=False)
        indices = normal.step.teacher_indices
        student_sites = self.alignment_sites(indices[0], layer)[0]
        student_sources = {site: source_values(normal.student.hidden_states[site], swap) for site in student_sites}
        request = self.intervened_request()
        intervened = self.run_pass(
            batch,
            pass_index=1,
            student_hooks=[self.interchanged(self.student, student_sites, student_sources, swap)],
            teacher_hooks=lambda index: [
                self.interchanged(self.teachers[index], self.alignment_sites(index, layer)[1], teacher_sources.pop(index), swap)
            ],
            student_request=request,
            teacher_request=lambda index: request,
            student_loss=False,  # pass 1's terms never read the student's own loss
            teacher_terms=lambda batch, student, teacher, index: self.causal_terms(batch, student, teacher),
            teachers=indices,
            combine=False,
        )
        per_teacher = [first | second for first, second in zip(normal.per_teacher, intervened.per_teacher)]  # roles kept
        terms = {**normal.terms, **intervened.terms}
        terms.update(self.multi_teacher.combine(per_teacher, normal.step))
        return total_loss(terms, type(self).__name__)

    def normal_terms(self, batch: dict[str, Tensor], student: Features, teacher: Features) -> LossTerms:
        """One teacher's weighted terms of the normal pass 0: soft and cosine."""
        terms = LossTerms()
        if self.prediction.soft_weight > 0:
            terms.soft("soft", self.prediction.soft_features(student, teacher, batch, per_sample=self.per_example_terms))
        if self.cosine_weight > 0:
            terms["cosine"] = self.cosine_weight * cosine_rows(
                student.hidden_states[-1], teacher.hidden_states[-1], term_positions(batch), self.reduction == "gkd"
            )
        return terms

    def causal_terms(self, batch: dict[str, Tensor], student: Features, teacher: Features) -> LossTerms:
        """One teacher's weighted terms of the intervened pass 1: causal soft and causal cosine."""
        terms = LossTerms()
        if self.causal_prediction.soft_weight > 0:
            # The intervened models' predictions compared: a soft prediction term under another name.
            terms.soft("causal_soft", self.causal_prediction.soft_features(student, teacher, batch, per_sample=self.per_example_terms))
        if self.causal_cosine_weight > 0:
            terms["causal_cosine"] = self.causal_cosine_weight * cosine_rows(
                student.hidden_states[-1], teacher.hidden_states[-1], term_positions(batch), self.reduction == "gkd"
            )
        return terms

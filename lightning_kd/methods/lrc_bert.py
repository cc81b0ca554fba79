"""LRC-BERT — Fu et al. (2021), "LRC-BERT: Latent-representation Contrastive Knowledge Distillation
for Natural Language Understanding", AAAI 2021.

Matches each student layer ``H^S_k`` (k = 1…L_S, projected to the teacher's width by a bias-free
linear map per teacher) with teacher layer ``H^T_{g(k)}`` (GKD uniform map) through a contrastive
COS-NCE loss whose negatives are the other examples of the batch, plus the usual prediction loss.
Optionally the student's embedding output is perturbed along the normalised gradient of the
first pass's loss and only the perturbed second pass trains the student.

Deliberate choices and differences from the GKD reference:

* Gradient perturbation: the reference back-propagates pass 0, fires a hook on the embeddings,
  zeroes every parameter gradient (``--ignore_first_backward_gard``) and returns pass 1's loss. We
  compute ``g = ∂loss₀/∂e`` with :func:`torch.autograd.grad` (no parameter gradient is touched),
  run pass 1 with ``e + ε·g/‖g‖`` (per token, over the hidden dimension) and return pass 1's terms
  only. The update is identical — the first pass is used only for its gradient — and it also works
  with gradient accumulation. ``ε`` defaults to 1 (the reference's unit step). A non-finite ``g``
  skips the perturbation; under autocast the loss is multiplied by a constant before the gradient
  (the normalisation removes it), as the reference's loss scale does. The teacher sees the unperturbed batch in both passes.
* The perturbation point is the output of the student's ``embeddings`` module (HF BERT: after its
  LayerNorm and dropout, the tensor entering the encoder) — GLM's summed word+position embedding
  has no exact HF equivalent. ``perturbation_point: word_embeddings`` perturbs the token embeddings
  before positions are added instead.
* The positive-pair coefficient is the reference's 1.5 by default (it subtracts the diagonal ``B``
  times); ``positive_term: paper`` gives the paper's coefficient 1.
* Negatives from other devices (``gather_negatives``): the reference all-gathers student and teacher
  matrices and keeps the local rows. Row ``b`` of the distance matrix only involves student example
  ``b``, so gathering the (gradient-free) teacher states is enough and gives the same local losses
  and gradients. Under one process it is a no-op.
* As the reference, every position is used (padding is not masked).

Across tokenizers (``teacher_tokenizer``): the teacher's hidden states are aligned to the student's tokens by
character spans (:meth:`~lightning_kd.core.method_hooks.MethodHooks.aligned_teacher`: per student token, the mean
of the teacher vectors sharing a character with it), so both per-example matrices are over the student's positions.
A student token without a teacher partner ([CLS], [SEP], padding, whitespace-only tokens) has no teacher vector
to compare with: its row is zeroed on both sides (``student_rows`` / ``teacher_rows`` of
:func:`~lightning_kd.losses.contrastive.cosine_distance_matrix`), so it contributes a cosine of 0 — a constant,
no gradient — while the mean keeps the reference's ``L·N`` denominator. A positive pair then compares the
example's partnered tokens, a negative pair the positions partnered in both examples. With the teacher reading
the student's ids nothing changes: every position, padding included, as the reference.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from lightning_kd.compat import attached_trainer
from lightning_kd.core.features import FeatureRequest, Features
from lightning_kd.core.layer_map import LayerMap, hidden_state_pairs, resolve_layer_map
from lightning_kd.core.module import DistillationModule
from lightning_kd.core.passes import forward_hook, total_loss
from lightning_kd.losses.contrastive import (
    PositiveTerm,
    contrastive_per_sample,
    cosine_distance_matrix,
)
from lightning_kd.losses.prediction import PredictionLoss

_GRAD_SCALE = 2.0**12
PerturbationPoint = Literal["embeddings_output", "word_embeddings"]


class LRCBERT(DistillationModule):
    """Latent-representation contrastive distillation with optional gradient perturbation.

    Args:
        contrastive_weight: weight ``α`` of the contrastive loss (GKD ``--lrc_bert_alpha``); 0 turns it off.
        layer_map: teacher hidden-state index for each student layer: ``"uniform"`` (GKD), ``"first"``,
            ``"last"`` or an explicit list (1-based).
        positive_term: ``"reference"`` (positive coefficient 1.5, GKD parity) or ``"paper"`` (1).
        gradient_perturbation: perturb the student's embeddings along the first pass's loss gradient and
            train on the second pass only (GKD ``--lrc_bert_gard_perturb --ignore_first_backward_gard
            --forward_repeat_num=1``). Needs ``forward_repeats=1``.
        perturbation_scale: step ``ε`` of the perturbation ``ε·g/‖g‖`` (1 = the reference).
        perturbation_point: ``"embeddings_output"`` (the tensor entering the encoder) or
            ``"word_embeddings"`` (token embeddings before positions are added).
        gather_negatives: use the examples of every data-parallel process as negatives (GKD
            ``--lrc_bert_gather_dp``); needs equal per-process batch shapes.
        prediction: the soft/hard prediction loss (``None``: contrastive loss only, GKD finetune-1).
        **kwargs: teacher/student/optimizer arguments of :class:`DistillationModule`.
    """

    def __init__(
        self,
        *,
        contrastive_weight: float = 1.0,
        layer_map: LayerMap = "uniform",
        positive_term: PositiveTerm = "reference",
        gradient_perturbation: bool = False,
        perturbation_scale: float = 1.0,
        perturbation_point: PerturbationPoint = "embeddings_output",
        gather_negatives: bool = False,
        prediction: PredictionLoss | None = None,
        **kwargs,
    ) -> None:
        super().__init__(prediction=prediction, **kwargs)
        if contrastive_weight < 0:
            raise ValueError(f"contrastive_weight must be >= 0 (0 turns the contrastive loss off), got {contrastive_weight}.")
        if contrastive_weight == 0 and prediction is None:
            raise ValueError("contrastive_weight is 0 and there is no prediction loss: nothing to train; set one of them.")
        if positive_term not in ("reference", "paper"):
            raise ValueError(f"positive_term must be 'reference' or 'paper', got {positive_term!r}.")
        if gradient_perturbation and self.forward_repeats != 1:
            raise ValueError(
                "gradient_perturbation runs exactly two passes (one for the gradient, one perturbed): set forward_repeats=1."
            )
        if gradient_perturbation and self.random_inputs is not None:
            raise ValueError("gradient_perturbation cannot be combined with random_inputs; remove one of them.")
        if not gradient_perturbation and (perturbation_scale != 1.0 or perturbation_point != "embeddings_output"):
            raise ValueError("perturbation_scale/perturbation_point only apply with gradient_perturbation=true.")
        if perturbation_scale <= 0:
            raise ValueError(f"perturbation_scale must be > 0, got {perturbation_scale}.")
        if perturbation_point not in ("embeddings_output", "word_embeddings"):
            raise ValueError(f"perturbation_point must be 'embeddings_output' or 'word_embeddings', got {perturbation_point!r}.")
        self.perturbation_point = perturbation_point
        if gradient_perturbation:
            self._perturbation_module()  # fail now when the student has no embeddings module
        if gather_negatives and contrastive_weight == 0:
            raise ValueError("gather_negatives only applies to the contrastive loss; set contrastive_weight > 0.")
        self.contrastive_weight, self.positive_term = contrastive_weight, positive_term
        self.gradient_perturbation, self.perturbation_scale = gradient_perturbation, perturbation_scale
        self.gather_negatives = gather_negatives
        student_depth, student_width = self.student.config.num_hidden_layers, self.student.config.hidden_size
        self.layer_pairs = [
            hidden_state_pairs(resolve_layer_map(layer_map, t.config.num_hidden_layers, student_depth), include_embeddings=False)
            for t in self.teachers
        ]
        self.projections = nn.ModuleList(nn.Linear(student_width, t.config.hidden_size, bias=False) for t in self.teachers)

    # ------------------------------------------------------------------ features and terms
    def student_request(self) -> FeatureRequest:
        return FeatureRequest(hidden_states=self.contrastive_weight > 0)

    def teacher_request(self, teacher_index: int) -> FeatureRequest:
        return FeatureRequest(hidden_states=self.contrastive_weight > 0)

    #: Its contrastive term reads a teacher of another tokenizer aligned to the student's tokens (module docstring).
    aligns_own_hidden_states = True

    def teacher_terms(self, batch: dict[str, Tensor], student: Features, teacher: Features, teacher_index: int) -> dict[str, Tensor]:
        terms = super().teacher_terms(batch, student, teacher, teacher_index)
        if self.contrastive_weight > 0:
            pairs = self.layer_pairs[teacher_index]
            projection = self.projections[teacher_index]
            _, aligned = self.aligned_teacher(batch, teacher, teacher_index)
            s = torch.stack([projection(student.hidden_states[i]) for i, _ in pairs])
            t = torch.stack([aligned.hidden_states[j] for _, j in pairs])
            # Across tokenizers only partnered student tokens compare (the aligned mask); otherwise every position.
            rows = aligned.attention_mask.bool() if self.reads_other_tokenizer(teacher_index) else None
            t, offset = self._gathered(t)
            t_rows = self._gathered_rows(rows) if rows is not None else None
            per_sample = contrastive_per_sample(cosine_distance_matrix(s, t, rows, t_rows), offset, self.positive_term)
            terms["contrastive"] = self.contrastive_weight * len(pairs) * per_sample.mean()
        return terms

    def _gathering(self) -> bool:
        return self.gather_negatives and attached_trainer(self) is not None and self.trainer.world_size > 1

    def _gathered(self, teacher: Tensor) -> tuple[Tensor, int]:
        """Teacher states ``(L, B, N, D)`` of every process and the column offset of this process's rows."""
        if not self._gathering():
            return teacher, 0
        gathered = self.all_gather(teacher.contiguous())  # (W, L, B, N, D); the teacher has no gradient
        world, layers, batch = gathered.shape[:3]
        gathered = gathered.permute(1, 0, 2, 3, 4).reshape(layers, world * batch, *gathered.shape[3:])
        return gathered, self.trainer.global_rank * batch

    def _gathered_rows(self, rows: Tensor) -> Tensor:
        """The ``(B, N)`` positions that enter, of every process, in :meth:`_gathered`'s column order."""
        if not self._gathering():
            return rows
        gathered = self.all_gather(rows.to(torch.uint8).contiguous())  # (W, B, N); bool is not gathered by every backend
        return gathered.reshape(-1, gathered.shape[-1]).bool()

    # ------------------------------------------------------------------ gradient perturbation
    def _perturbation_module(self) -> nn.Module:
        if self.perturbation_point == "word_embeddings":
            return self.student.get_input_embeddings()
        embeddings = getattr(self.student.base_model, "embeddings", None)
        if not isinstance(embeddings, nn.Module):
            raise ValueError(  # noqa: TRY004 — a configuration error, reported like every other one
                f"{type(self.student).__name__} has no `embeddings` module to perturb; use "
                "perturbation_point='word_embeddings' or gradient_perturbation=false."
            )
        return embeddings

    def compute_losses(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Without perturbation: the base step. With it: pass 0 gives ``g = ∂loss₀/∂e``, pass 1 runs with
        ``e + ε·g/‖g‖`` and only pass 1's terms are returned (and trained on)."""
        if not self.gradient_perturbation:
            return super().compute_losses(batch)
        module = self._perturbation_module()
        captured: dict[str, Tensor] = {}

        def keep(_module, _inputs, output):
            captured["e"] = output

        with torch.enable_grad():
            first = self.run_pass(batch, pass_index=0, student_hooks=[forward_hook(module, keep)]).terms
        delta = None
        embedding = captured.get("e")
        loss0 = torch.stack([v.float().sum() for v in first.values()]).sum() if first else None
        if loss0 is not None and embedding is not None and embedding.requires_grad and loss0.requires_grad:
            # Under autocast, scale the loss so half-precision gradients do not underflow; g/‖g‖ removes the scale.
            scale = _GRAD_SCALE if torch.is_autocast_enabled(embedding.device.type) else 1.0
            (grad,) = torch.autograd.grad(loss0 * scale, embedding, allow_unused=True)
            if grad is not None and torch.isfinite(grad).all():
                delta = perturbation(grad, self.perturbation_scale).detach()
        del first, loss0
        captured.clear()

        def shift(_module, _inputs, output):
            return output + delta.to(output.dtype)

        hooks = [forward_hook(module, shift)] if delta is not None else []
        return total_loss(self.run_pass(batch, pass_index=1, student_hooks=hooks).terms, type(self).__name__)


def perturbation(grad: Tensor, scale: float = 1.0) -> Tensor:
    """``ε·g/‖g‖₂`` normalised per token over the last (hidden) dimension; zero where ``g`` is zero."""
    norm = grad.float().norm(dim=-1, keepdim=True)
    return torch.where(norm > 0, scale * grad.float() / norm.clamp_min(torch.finfo(torch.float32).tiny), 0.0)

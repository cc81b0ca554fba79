"""Continuation-KD — Jafari et al. (2022), "Continuation KD: Improved Knowledge Distillation through
the Lens of Continuation Optimization" (Findings of EMNLP).

The annealed logit regression of Annealing-KD, moved gradually onto the labels and with a margin:

``L = ψ(i)·hard_weight·L_hard + mean_b[(1 − ψ(i))·ℓ_b·𝟙(ℓ_b > margin·φ(i))]``,
``ℓ_b = soft_weight · mean_c(z^S_b − φ(i)·z^T_b)²``.

``φ`` (the annealed teacher scale, a staircase up to 1) comes from
:class:`~lightning_kd.callbacks.TemperatureSchedule` and ``ψ`` (0 → ½ linearly, then 1) from
:class:`~lightning_kd.callbacks.ContinuationWeight`; the method attaches both (the seed's ``τ_max = 10``,
``σ = 0.666``, ``δ = 1.333``) unless the trainer has its own of a type. The hard
term is left out while ``ψ = 0`` and the soft term once ``ψ = 1``. Examples already within the margin
contribute nothing; the indicator is a constant, so the gradient equals that of the hinge
``max(0, ℓ_b − margin·φ)`` — only the logged value differs (:func:`~lightning_kd.losses.continuation.margin_gated`).

As in Annealing-KD, the knobs are the method's own arguments, not a ``prediction:`` block: the
soft term is the margin-gated, annealed logit MSE, not a prediction loss with a free ``soft_loss``
or ``temperature``.

Where we differ from the GKD reference: nothing in the math. For MLM logits ``ℓ_b`` averages over
each example's chosen positions (``reduction="masked_mean"``); ``"gkd"`` divides by all positions.
"""

from __future__ import annotations

import pytorch_lightning as pl
from torch import Tensor

from lightning_kd.callbacks.continuation_weight import ContinuationWeight
from lightning_kd.callbacks.temperature_schedule import TemperatureSchedule
from lightning_kd.core.features import Features
from lightning_kd.losses.continuation import margin_gated
from lightning_kd.losses.masking import Reduction
from lightning_kd.losses.prediction import SoftPositions
from lightning_kd.methods.annealing_kd import AnnealingKD


class ContinuationKD(AnnealingKD):
    """Annealed logit regression with a margin, handed over to the hard labels by ``ψ``.

    :class:`~lightning_kd.callbacks.TemperatureSchedule` sets :attr:`teacher_scale` and
    :class:`~lightning_kd.callbacks.ContinuationWeight` sets :attr:`hard_mix` before every training
    batch: ``fit`` attaches both with the seed's values (:meth:`default_callbacks`) unless the
    trainer's callbacks hold one of a type (then that one drives its attribute). When calling
    :meth:`compute_losses` directly, set both attributes yourself.

    Args:
        margin: ``m``; an example's soft loss counts only while it exceeds ``m·φ`` (GKD
            ``--continuation_kd_margin``), >= 0.
        soft_weight: weight inside ``ℓ_b`` (GKD ``--distill_soft_rate``; > 0).
        hard_weight: weight of the task/MLM loss before ``ψ`` (GKD ``--distill_hard_rate``; > 0).
        soft_positions: MLM positions the MSE covers: ``"masked_tokens"``, ``"all_tokens"`` or ``"all_positions"``.
        reduction: ``"masked_mean"`` or ``"gkd"`` (divide by all positions, for parity).
        **kwargs: teacher/student/optimizer arguments of :class:`DistillationModule`.
    """

    on_policy_refused = (
        "its schedule hands the whole loss to the hard term (ψ → 1), which a batch the student wrote does not have "
        "(its tokens are not targets)"
    )

    def __init__(
        self,
        *,
        margin: float = 1.0,
        soft_weight: float = 1.0,
        hard_weight: float = 1.0,
        soft_positions: SoftPositions = "masked_tokens",
        reduction: Reduction = "masked_mean",
        **kwargs,
    ) -> None:
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}.")
        if hard_weight <= 0:
            raise ValueError(
                f"hard_weight must be > 0: once ψ = 1 the hard loss is Continuation-KD's only term (got {hard_weight}); "
                "without labels use AnnealingKD."
            )
        super().__init__(
            soft_weight=soft_weight, hard_weight=hard_weight, soft_positions=soft_positions, reduction=reduction, **kwargs
        )
        self.margin = margin
        #: ``ψ``, the share of the hard loss; set by ContinuationWeight before every training batch.
        self.hard_mix: float | None = None

    def _hard_mix(self) -> float:
        if self.hard_mix is None:
            raise RuntimeError(
                "ContinuationKD has no hard/soft mix ψ: a Trainer fit sets it (ContinuationWeight, attached by "
                "default); set `method.hard_mix = ψ` before calling compute_losses directly."
            )
        return self.hard_mix

    def student_terms(self, batch: dict[str, Tensor], student: Features) -> dict[str, Tensor]:
        psi = self._hard_mix()
        if psi <= 0:
            return {}
        return {name: psi * value for name, value in super().student_terms(batch, student).items()}

    def teacher_terms(
        self, batch: dict[str, Tensor], student: Features, teacher: Features, teacher_index: int
    ) -> dict[str, Tensor]:
        psi = self._hard_mix()
        if psi >= 1:
            return {}
        prediction = self.scaled_prediction()
        per_example = prediction.soft_features(student, teacher, batch, per_sample=True)
        gated = (1.0 - psi) * margin_gated(per_example, self.margin * prediction.mse_teacher_scale)
        return {"soft": gated if self.per_example_terms else gated.mean()}

    # ------------------------------------------------------------------ schedule
    def default_callbacks(self) -> list[pl.Callback]:
        """The schedules ``fit`` attaches when the trainer has none of their type (each on its own):
        ``φ`` in ``τ_max = 10`` equal steps (GKD ``--continuation_kd_max_t=10``) and ``ψ`` rising as
        ``i/(1.333·I)`` until ``0.666·I``, then 1 (``--continuation_kd_psi_sep=0.666
        --continuation_kd_psi_denominator=1.333``). ``configure_callbacks`` is AnnealingKD's."""
        return [TemperatureSchedule(max_temperature=10), ContinuationWeight(switch_fraction=0.666, ramp_denominator=1.333)]

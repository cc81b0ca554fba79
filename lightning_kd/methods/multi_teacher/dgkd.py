"""DGKD — Son, Na, Choi and Hwang (2021), "Densely Guided Knowledge Distillation using Multiple
Teacher Assistants" (ICCV 2021).

The student learns from the original teacher *and* every teacher assistant trained before it (the
chain itself is :mod:`lightning_kd.pipeline` with ``configs/pipelines/dgkd.yaml``). Stochastic DGKD
drops each teacher independently at every step with probability ``1 − survival_p``; the surviving
teachers' terms are summed (``sum_losses``, the seed) or averaged:

    L = Σ_{i∈S} ℓ_i  (or mean_{i∈S} ℓ_i)  +  hard_weight · L_hard

Where we differ from the GKD reference (``--multi_teacher_model=avg --avgmt_*``), and why:

* **The hard loss is the method's own term, added once.** The reference appends
  ``r_hard · L_hard`` as one more term when ``survival_p < 1`` (whatever the ``--distill_*_hard``
  flags) and then sums or divides by the number of terms, hard term included; a hard term inside the
  per-teacher loss is counted once per teacher when summing. Here ``hard_weight · L_hard`` is added
  exactly once, whether or not teachers are dropped, and averaging covers the teacher terms only. The
  seed (summing, ``--distill_hard_rate=0.5`` with no ``--distill_ft_hard``) is reproduced exactly by
  ``hard_weight: 0.5`` (``configs/gkd/dgkd/``); with averaging the reference's hard weight would vary
  with the number of survivors, which we do not reproduce.
* **At least one teacher always survives.** When every draw fails, one teacher chosen uniformly at
  random (from the same seeded generator) is kept, so a step never loses all its distillation signal.
* **Draws are seeded by ``(seed, global step)``** so every DDP rank drops the same teachers (the spec's
  recommendation); with gradient accumulation all micro-batches of one optimizer step share a draw.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from lightning_kd.core.multi_teacher import Average, TeacherStep
from lightning_kd.core.terms import LossTerms, weighted_sum


def survival_draw(num_teachers: int, survival_p: float, seed: int, step: int) -> list[int]:
    """Indices of the teachers that survive step ``step`` (never empty; same on every process)."""
    generator = torch.Generator().manual_seed((seed * 1_000_003 + step) % (2**63 - 1))
    keep = torch.rand(num_teachers, generator=generator) < survival_p
    if not keep.any():
        keep[torch.randint(num_teachers, (1,), generator=generator)] = True
    return keep.nonzero().flatten().tolist()


class DGKD(Average):
    """Average (or sum) over teachers, each teacher surviving a step with probability ``survival_p``.

    Args:
        survival_p: probability that a teacher takes part in a step (GKD
            ``--avgmt_teacher_survival_p``); 1 keeps every teacher. At least one teacher always runs.
        sum_losses: sum the surviving teachers' terms instead of averaging them (GKD ``--avgmt_sum_loss``).
        seed: seed of the survival draws, combined with the global step.
    """

    def __init__(self, survival_p: float = 1.0, sum_losses: bool = False, seed: int = 0) -> None:
        super().__init__()
        if not 0.0 < survival_p <= 1.0:
            raise ValueError(f"survival_p is a probability in (0, 1], got {survival_p}; 1 keeps every teacher.")
        self.survival_p, self.sum_losses, self.seed = survival_p, sum_losses, seed

    def select_teachers(self, num_teachers: int, step: int) -> list[int]:
        if self.survival_p >= 1.0:
            return list(range(num_teachers))
        return survival_draw(num_teachers, self.survival_p, self.seed, step)

    def combine(self, per_teacher: Sequence[Mapping[str, Tensor]], step: TeacherStep) -> LossTerms:
        if not self.sum_losses:
            return super().combine(per_teacher, step)
        return weighted_sum(per_teacher)

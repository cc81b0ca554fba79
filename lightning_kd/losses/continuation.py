"""Continuation-KD's margin gate — Jafari et al. (2022), "Continuation KD: Improved Knowledge
Distillation through the Lens of Continuation Optimization" (Findings of EMNLP).
"""

from __future__ import annotations

from torch import Tensor


def margin_gated(per_sample: Tensor, threshold: float) -> Tensor:
    """``per_sample · 𝟙(per_sample > threshold)``, shape ``(B,)``: examples the student already fits
    to within the margin contribute nothing.

    The indicator is a constant, so the gradient equals that of the hinge ``max(0, ℓ_b − threshold)``;
    only the reported value differs (active examples count in full, not above the threshold).
    """
    return per_sample * (per_sample.detach() > threshold).to(per_sample.dtype)

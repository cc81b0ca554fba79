"""Attention over teacher layers: each student layer matches a per-example mixture of all teacher layers.

Shared by ALP-KD (Passban et al. 2021) and Universal-KD (Wu et al. 2021). Instead of a fixed
student→teacher layer map, student layer ``i`` attends over the ``J`` teacher layers with weights
``α_ij = softmax_j(scale · ⟨s_i, t_j⟩)`` computed per example, and is compared with the mixture
``t̂_i = Σ_j α_ij t_j``. Nothing is detached on the student side: the student receives gradient
both directly and through ``α``.

Shapes: ``student`` is ``(B, I, d)`` (one pooled vector per student layer), ``teacher`` is
``(B, J, d)`` (one pooled vector per teacher layer); both must have the same width ``d``.
"""

from __future__ import annotations

from torch import Tensor

from lightning_kd.losses.logits import soft_kl


def layer_attention(student: Tensor, teacher: Tensor, scale: float = 1.0) -> tuple[Tensor, Tensor]:
    """Attention of each student layer over the teacher layers, and the attended teacher mixture.

    Args:
        student: ``(B, I, d)`` student layer vectors (the queries).
        teacher: ``(B, J, d)`` teacher layer vectors (keys and values).
        scale: multiplier on the dot products before the softmax (1 = raw dot product, as both
            reference methods use; ``1/√d`` gives scaled dot-product attention).

    Returns:
        ``weights`` of shape ``(B, I, J)`` (rows sum to 1) and ``targets`` of shape ``(B, I, d)``,
        ``targets[b, i] = Σ_j weights[b, i, j] · teacher[b, j]``.
    """
    if student.shape[0] != teacher.shape[0] or student.shape[-1] != teacher.shape[-1]:
        raise ValueError(
            f"layer_attention needs the same batch and width on both sides, got student {tuple(student.shape)} "
            f"and teacher {tuple(teacher.shape)}; project one side first."
        )
    scores = scale * (student.float() @ teacher.float().transpose(1, 2))
    weights = scores.softmax(dim=-1)
    return weights, weights @ teacher.float()


def attended_mse(student: Tensor, teacher: Tensor, scale: float = 1.0, per_sample: bool = False) -> Tensor:
    """ALP-KD's loss: ``Σ_i mean_{b,d} (s_i − t̂_i)²`` with ``t̂_i`` from :func:`layer_attention`.

    Args:
        student: ``(B, I, d)`` pooled student vectors ([CLS] on encoders), one per student layer.
        teacher: ``(B, J, d)`` pooled teacher vectors, one per teacher layer.
        scale: dot-product multiplier inside the attention softmax.
        per_sample: return ``(B,)`` per-example values (``Σ_i mean_d``) instead of a scalar.
    """
    _, targets = layer_attention(student, teacher, scale)
    per_layer = (student.float() - targets).pow(2).mean(dim=-1)  # (B, I)
    per_example = per_layer.sum(dim=1)
    return per_example if per_sample else per_example.mean()


def attended_kl(student: Tensor, teacher: Tensor, scale: float = 1.0, per_sample: bool = False) -> Tensor:
    """Universal-KD's loss: ``Σ_i mean_b KL(softmax(t̂_i) ‖ softmax(s_i))``, softmax over the ``d`` features.

    Args:
        student: ``(B, I, d)`` projected student layer vectors ``u_i``.
        teacher: ``(B, J, d)`` projected teacher layer vectors ``v_j``.
        scale: dot-product multiplier inside the attention softmax.
        per_sample: return ``(B,)`` per-example values (``Σ_i KL``) instead of a scalar.
    """
    _, targets = layer_attention(student, teacher, scale)
    # soft_kl's per-sample form averages the I rows of each example; the method sums them.
    per_example = soft_kl(student, targets, temperature=1.0, t2_scale=False, per_sample=True) * student.shape[1]
    return per_example if per_sample else per_example.mean()

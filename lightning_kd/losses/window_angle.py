"""CKD's windowed word angles as one fused, chunked kernel with a hand-written gradient.

For every (sequence, layer, centre token ``v``) the word-angle term compares two ``w × w`` matrices
``A[a, a'] = ⟨n(x_{e_a} − x_v), n(x_{e_a'} − x_v)⟩`` (``e_a`` the clamped window positions, ``n`` the
L2 normalisation), one per model. Written with autograd ops this is a chain of ~25 passes over
``(B, K, S, w, w)`` tensors (29 MB each at 32 × 4 × 128, w = 21) that fall out of every CPU cache and
(on glibc) get mapped and zero-filled again on every step. Here the same numbers are produced one
chunk of rows at a time while the chunk is still cache-resident, and the gradient with respect to the
student's Gram matrix is accumulated *in the same pass* (the loss is a plain sum, so ``backward`` only
scales it by the incoming gradient). Nothing of size ``(…, w, w)`` is kept between forward and backward.

Everything is computed from Gram matrices ``G`` (``(B, K, S, S)``, symmetric, float32) with
``⟨x_a − x_v, x_b − x_v⟩ = G_ab − G_va − G_vb + G_vv``; see :mod:`lightning_kd.losses.relation`
for the masking and degeneracy rules, which are the same here.

Gradient (per centre, dropping the centre index; ``R = A_S − A_T``, ``L = Σ R²``, ``E`` the
un-normalised dot products, ``ι = 1/|x_{e_a} − x_v|`` or 0 where dropped, ``q = |x_{e_a} − x_v|²``)::

    ∂L/∂E[a, a'] = 2 R[a, a'] ι_a ι_a'                     (= Q, symmetric)
    ∂L/∂q_a      = −2 ι_a² Σ_a' R[a, a'] A[a, a']          (= h; ι = q^(−1/2))
    ∂L/∂G[e_a, e_a'] += Q[a, a']       ∂L/∂G[v, e_a] += −2 Σ_a' Q[a, a'] − 2 h_a
    ∂L/∂G[e_a, e_a]  += h_a            ∂L/∂G[v, v]   += Σ Q + Σ h

and the teacher's with ``−R`` in place of ``R``. It is checked against finite differences in float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

EPS = 1e-12  # the reference's L2-normalisation epsilon
DEGENERATE = 1e-5  # |d|² ≤ this × (|a|² + |v|²) (centred) counts as a zero difference vector
CHUNK_ELEMENTS = 1 << 18  # ≈ 1 MB of float32 per (rows, S, w, w) chunk: a handful of them stay in L2/L3


def at_least_float32(x: Tensor) -> Tensor:
    """``x`` in float32, or kept in float64 (reduced precision would ruin the angles; float64 serves the checks)."""
    return x if x.dtype == torch.float64 else x.float()


def window_indices(length: int, window_size: int, device=None) -> tuple[Tensor, Tensor]:
    """Neighbour positions of every token and where they coincide with it.

    Returns ``(index, at_centre)``, both ``(S, w)``: ``index[i, a] = clamp(i − r + a, 0, S−1)`` with
    ``r = (w−1)/2`` — clamped to the padded length, so edge tokens repeat, as in the reference.
    """
    if window_size < 1 or window_size % 2 == 0:
        raise ValueError(f"window_size must be a positive odd number (the window is centred on a token), got {window_size}.")
    radius = (window_size - 1) // 2
    positions = torch.arange(length, device=device)
    index = (positions[:, None] - radius + torch.arange(window_size, device=device)[None, :]).clamp(0, length - 1)
    return index, index == positions[:, None]


def window_blocks(gram: Tensor, radius: int) -> Tensor:
    """``gram[..., index[i, a], index[i, a']]`` for :func:`window_indices`' clamped windows, as a view.

    Replicate-padding the ``(…, S, S)`` matrix by ``r`` turns every window into the square block
    ``padded[i : i + w, i : i + w]``, so the ``(…, S, w, w)`` result is a strided view of the padded
    matrix instead of an advanced-index gather (a slow full write). No autograd support: the kernel
    below differentiates by hand (:func:`fold_window_blocks` is the adjoint).
    """
    padded = F.pad(gram.flatten(0, -3), (radius,) * 4, mode="replicate")  # (N, S + 2r, S + 2r)
    n, rows, _ = padded.shape
    size, width = gram.shape[-1], 2 * radius + 1
    view = padded.as_strided((n, size, width, width), (rows * rows, rows + 1, rows, 1))
    return view.unflatten(0, gram.shape[:-2])


def fold_window_blocks(blocks: Tensor, radius: int) -> Tensor:
    """The adjoint of :func:`window_blocks`: add every ``(…, S, w, w)`` entry back to its Gram position.

    Entries are added band by band (``w`` non-overlapping strided views of the padded matrix), then
    the replicate padding is folded onto the edges.
    """
    shape = blocks.shape
    size, width = shape[-3], 2 * radius + 1
    blocks = blocks.reshape(-1, size, width, width)
    rows = size + 2 * radius
    padded = blocks.new_zeros(blocks.shape[0], rows, rows)
    for a in range(width):  # row a of every window: the entries padded[i + a, i + a'] (distinct)
        padded.as_strided((blocks.shape[0], size, width), (rows * rows, rows + 1, 1), a * rows).add_(blocks[:, :, a, :])
    source = padded.new_empty(blocks.shape[0], size, size)  # shape only: the unpadded size
    folded = torch.ops.aten.replication_pad2d_backward(padded, source, [radius] * 4)
    return folded.view(*shape[:-3], size, size)


def inverse_difference_lengths(g_vv: Tensor, g_ve: Tensor, g_ee: Tensor, dropped: Tensor) -> Tensor:
    """``1/|x_e − x_v|`` from Gram entries, 0 where ``dropped`` or where the difference is (numerically) zero.

    ``g_vv`` ``(…, P)``, ``g_ve`` and ``g_ee`` ``(…, P, E)``. Zeroing the scale instead of the angles
    avoids a pass over the ``(…, P, E, E)`` result; the clamp keeps ``rsqrt`` finite, so the zeroed
    branch's gradient is 0, not NaN.
    """
    squared = g_ee - 2 * g_ve + g_vv[..., None]  # |x_e − x_v|²
    dropped = dropped | (squared <= DEGENERATE * (g_ee + g_vv[..., None])) | (squared <= EPS * EPS)
    return torch.where(dropped, 0.0, squared.clamp_min(EPS * EPS).rsqrt())


def _angles(gram: Tensor, index: Tensor, at_centre: Tensor, keep: Tensor, radius: int) -> tuple[Tensor, Tensor]:
    """Window angle matrices ``A`` ``(N, S, w, w)`` and inverse difference lengths ``ι`` ``(N, S, w)``."""
    size, width = gram.shape[-1], index.shape[-1]
    g_vv = gram.diagonal(dim1=-2, dim2=-1)  # (N, S)
    g_ve = gram.gather(-1, index.expand(gram.shape[0], size, width))  # G[v, e_a]
    inverse = inverse_difference_lengths(g_vv, g_ve, g_vv[:, index], at_centre | ~keep)  # g_ee = G[e_a, e_a]
    # E = G[e_a, e_a'] − G[v, e_a] − (G[v, e_a'] − G[v, v]), then scaled by ι_a ι_a', in place.
    angles = window_blocks(gram, radius) - g_ve[..., :, None]
    angles -= (g_ve - g_vv[..., None])[..., None, :]
    angles *= inverse[..., :, None]
    angles *= inverse[..., None, :]
    return angles, inverse


def _gram_gradient(scaled_gap: Tensor, angles: Tensor, inverse: Tensor, index: Tensor, radius: int) -> Tensor:
    """``∂(Σ R²)/∂G`` for one model, given ``scaled_gap = ±2R`` (``+`` student, ``−`` teacher); see the module docstring."""
    size, width = angles.shape[-3], index.shape[-1]
    h = -(scaled_gap * angles).sum(-1) * inverse.square()  # ∂L/∂q
    q = scaled_gap * inverse[..., :, None]
    q *= inverse[..., None, :]  # ∂L/∂E, symmetric
    grad = fold_window_blocks(q, radius)  # G[e_a, e_a'] entries
    grad.scatter_add_(-1, index.expand(grad.shape[0], size, width), -2 * (q.sum(-1) + h))  # G[v, e_a]
    diagonal = grad.diagonal(dim1=-2, dim2=-1)
    diagonal += q.sum((-1, -2)) + h.sum(-1)  # G[v, v]
    diagonal.scatter_add_(-1, index.flatten().expand(grad.shape[0], size * width), h.flatten(-2))  # G[e_a, e_a]
    return grad


class _WindowAngleGap(torch.autograd.Function):
    """Per-row ``Σ (A_S − A_T)²`` over all windows; gradients accumulated chunk by chunk in forward."""

    @staticmethod
    def forward(ctx, student: Tensor, teacher: Tensor, keep: Tensor, window_size: int) -> Tensor:
        rows, size = student.shape[0], student.shape[-1]
        radius = (window_size - 1) // 2
        index, at_centre = window_indices(size, window_size, student.device)
        need_student, need_teacher = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_student = torch.empty_like(student) if need_student else None
        grad_teacher = torch.empty_like(teacher) if need_teacher else None
        totals = student.new_empty(rows)
        step = max(1, CHUNK_ELEMENTS // (size * window_size * window_size))
        with torch.autocast(device_type=student.device.type, enabled=False):
            for start in range(0, rows, step):
                part = slice(start, start + step)
                angles_s, inverse_s = _angles(student[part], index, at_centre, keep[part], radius)
                angles_t, inverse_t = _angles(teacher[part], index, at_centre, keep[part], radius)
                gap = angles_s - angles_t
                totals[part] = gap.flatten(1).square().sum(1)
                if need_student:
                    grad_student[part] = _gram_gradient(2 * gap, angles_s, inverse_s, index, radius)
                if need_teacher:
                    grad_teacher[part] = _gram_gradient(-2 * gap, angles_t, inverse_t, index, radius)
        ctx.save_for_backward(grad_student, grad_teacher)
        return totals

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_totals: Tensor):
        grad_student, grad_teacher = ctx.saved_tensors
        scale = grad_totals[:, None, None]
        return (
            None if grad_student is None else grad_student * scale,
            None if grad_teacher is None else grad_teacher * scale,
            None,
            None,
        )


def window_angle_gap(student_gram: Tensor, teacher_gram: Tensor, keep: Tensor, window_size: int) -> Tensor:
    """``Σ_{v, a, a'} (A_S[v, a, a'] − A_T[v, a, a'])²`` for each row of a batch of Gram matrices.

    Args:
        student_gram: ``(N, S, S)`` symmetric Gram matrices of centred vectors (student), computed
            in float32 (float64 stays float64).
        teacher_gram: ``(N, S, S)`` the same for the teacher.
        keep: ``(N, S, w)`` bool, the (centre, neighbour) pairs that enter the sum; the angle
            entries of a dropped neighbour are 0 in both models.
        window_size: odd ``w``.

    Returns:
        ``(N,)`` sums. Differentiable in both Gram inputs (not twice).
    """
    return _WindowAngleGap.apply(at_least_float32(student_gram), at_least_float32(teacher_gram), keep.bool(), window_size)

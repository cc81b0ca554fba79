"""Contextual relation losses of CKD: word relations and layer-transforming relations.

Park, Kim and Yang (2021), "Distilling Linguistic Context for Language Model Compression", EMNLP.

Every relation is computed *inside* one model (cosines between its own vectors, angles between its
own difference vectors), so student and teacher widths may differ and no projection is needed.

Shapes: a *hidden stack* is ``(B, K, S, D)`` — ``K`` hidden states (embeddings and layers) of a
batch of ``B`` sequences of ``S`` tokens; the student's and the teacher's ``D`` may differ.
``mask`` is ``(B, S)``, true (or 1) at real tokens. Teacher inputs are expected without a graph.

Precision. Everything runs in float32, matrix products included even under autocast.

Masking. No NaN can come out of a padded or single-token row: excluded entries never reach a
softmax as ``−inf`` (they get a finite fill whose ``exp`` underflows to 0, so they add exactly 0 to a
sum, and a row without valid entries is the same constant in both models) and dropped terms are
zeroed by finite scales rather than divisions by 0, so gradients stay finite too. The GKD reference produced NaN there
and relied on old ``kl_div`` semantics to drop it.

Reductions (``reduction``):

* ``"masked_mean"`` (default): the sum over the entries that enter the loss divided by their
  number; in the word-angle term a padded neighbour is excluded like a padded centre.
* ``"gkd"`` (parity): the reference's denominators — ``K·Σ_b n_b²`` (word distance, diagonal
  counted), ``K·w²·Σ_b n_b`` (word angle, with padded neighbours *included*, as the reference only
  masks the window's centre), ``K²·Σ_b n_b`` (layer distance) and ``K³·Σ_b n_b`` (layer angle),
  where ``n_b`` is the number of real tokens of sequence ``b``.

Angles are assembled from Gram matrices (``⟨x_a − x_v, x_b − x_v⟩ = G_ab − G_va − G_vb + G_vv``)
instead of materialising every difference vector: the windowed word-angle term then needs
``B·K·S·(S + w²)`` floats rather than ``B·K·S·w·D`` (about 3.7 GB in the reference's worst case).
Vectors are centred first, which leaves every difference unchanged and keeps float32 cancellation
small; a difference shorter than ~0.3 % of the vectors' scale counts as the zero vector (cosine 0,
as the reference's ``normalize`` gives for equal vectors).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

RelationReduction = Literal["masked_mean", "gkd"]

EPS = 1e-12  # the reference's L2-normalisation epsilon
_FILL = -1e4  # logit of an excluded entry: exp underflows to exactly 0 next to cosines in [-1, 1]
_DEGENERATE = 1e-5  # |d|² ≤ this × (|a|² + |v|²) (centred) counts as a zero difference vector


def _check(student: Tensor, teacher: Tensor, mask: Tensor, reduction: str) -> Tensor:
    if student.dim() != 4 or teacher.dim() != 4 or student.shape[:3] != teacher.shape[:3]:
        raise ValueError(
            f"Expected hidden stacks (B, K, S, D) with equal B, K, S; got {tuple(student.shape)} and {tuple(teacher.shape)}."
        )
    if mask.shape != (student.shape[0], student.shape[2]):
        raise ValueError(f"mask must be (B, S) = {(student.shape[0], student.shape[2])}, got {tuple(mask.shape)}.")
    if reduction not in ("masked_mean", "gkd"):
        raise ValueError(f"Unknown reduction {reduction!r}; choose 'masked_mean' or 'gkd'.")
    return mask.bool()


def _finish(total: Tensor, count: Tensor, per_sample: bool) -> Tensor:
    """``total``/``count`` are per-sample ``(B,)``; an empty denominator gives 0 (never NaN)."""
    if per_sample:
        return total / count.clamp_min(1.0)
    return total.sum() / count.sum().clamp_min(1.0)


def float_gram(x: Tensor) -> Tensor:
    """``x xᵀ`` over the last two axes in float32, also under autocast (bf16 would ruin the angles)."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.float()
        return x @ x.transpose(-1, -2)


def _cosines(x: Tensor) -> Tensor:
    """Pairwise cosines over the second-to-last axis: ``(..., M, D)`` → ``(..., M, M)``."""
    # Scaling the (…, M, M) Gram matrix by the inverse norms (its diagonal) equals normalising first,
    # and costs passes over M² numbers instead of over M·D (M = 4 layers against D = 384 for LTR).
    gram = float_gram(x)
    inverse = gram.diagonal(dim1=-2, dim2=-1).clamp_min(EPS * EPS).rsqrt()  # 1 / max(|x|, EPS)
    return gram * (inverse[..., :, None] * inverse[..., None, :])


def _masked_kl(teacher_logits: Tensor, student_logits: Tensor, keep: Tensor) -> Tensor:
    """``P_t (log P_t − log P_s)`` with ``P = softmax`` over the kept entries of the last axis; 0 elsewhere."""
    log_p_t = teacher_logits.masked_fill(~keep, _FILL).log_softmax(dim=-1)
    log_p_s = student_logits.masked_fill(~keep, _FILL).log_softmax(dim=-1)
    # No torch.where pass is needed: an excluded entry of a row with kept entries has P_t = exp(−10⁴…)
    # = 0 exactly, and a row without kept entries is the same constant in both models, so
    # log P_t − log P_s = 0 exactly there (and the fill stops the student's gradient).
    return log_p_t.exp() * (log_p_t - log_p_s)


def angles_from_gram(
    gram: Tensor, vertices: Tensor, ends: Tensor, at_vertex: Tensor, keep: Tensor | None = None, block: Tensor | None = None
) -> Tensor:
    """Cosines of the angles at each vertex between pairs of end points, from a Gram matrix.

    Args:
        gram: ``(..., M, M)`` inner products of ``M`` vectors (centred, so cancellation is small).
        vertices: ``(P,)`` long, the vertex of each of ``P`` angle sets.
        ends: ``(P, E)`` long, the end points of each set.
        at_vertex: ``(P, E)`` bool, end point equals its vertex (difference exactly zero).
        keep: optional bool, broadcastable to ``(..., P, E)``: end points to keep; the entries of
            a dropped end point are 0 (so masked entries vanish from a difference of two angle sets).
        block: optional ``gram[..., ends[:, :, None], ends[:, None, :]]``, ``(..., P, E, E)``, when the
            caller has it cheaper than this advanced-index gather (e.g. :func:`_windows`' view).

    Returns:
        ``(..., P, E, E)``: ``⟨n(x_e − x_v), n(x_e' − x_v)⟩`` with ``n`` the L2 normalisation; 0 where
        either difference is (numerically) the zero vector or either end point is dropped.
    """
    g_vv = gram[..., vertices, vertices]  # (..., P)
    g_ve = gram[..., vertices[:, None], ends]  # (..., P, E)
    g_ee_diagonal = gram[..., ends, ends]  # (..., P, E)
    squared = g_ee_diagonal - 2 * g_ve + g_vv[..., None]  # |x_e − x_v|²
    degenerate = at_vertex | (squared <= _DEGENERATE * (g_ee_diagonal + g_vv[..., None]))
    if keep is not None:
        degenerate = degenerate | ~keep
    # 1/|x_e − x_v|, zero where dropped: masking by the scale avoids a separate pass over the
    # (..., P, E, E) result. The clamp keeps rsqrt finite, so the zeroed branch's gradient is 0, not NaN.
    inverse = torch.where(degenerate, 0.0, squared.clamp_min(EPS * EPS).rsqrt())
    # ⟨x_e − x_v, x_e' − x_v⟩ = g_ee' − g_ve − (g_ve' − g_vv): two passes over the large tensor.
    if block is None:
        block = gram[..., ends[:, :, None], ends[:, None, :]]
    dots = block - g_ve[..., :, None] - (g_ve - g_vv[..., None])[..., None, :]
    return dots * inverse[..., :, None] * inverse[..., None, :]


def _centred(x: Tensor, dim: int, weights: Tensor | None = None) -> Tensor:
    """``x`` minus its (weighted) mean along ``dim``; the mean is detached (differences are unchanged)."""
    x = x.float()
    if weights is None:
        return x - x.mean(dim=dim, keepdim=True).detach()
    total = weights.sum(dim=dim, keepdim=True).clamp_min(1.0)
    with torch.no_grad():  # the weighted sum as a matrix product: no (…, D)-sized temporary
        mean = (weights.transpose(dim, -1).to(x.dtype) @ x.transpose(dim, -2)).transpose(dim, -2) / total
    return x - mean


def word_relation_distance(
    student: Tensor, teacher: Tensor, mask: Tensor, reduction: RelationReduction = "masked_mean", per_sample: bool = False
) -> Tensor:
    """WR-Dist: KL between the models' softmaxed token-pair cosine rows, per layer.

    For every sequence, layer ``k`` and real token ``i``: ``P_{k,i}(j) = softmax_j cos(e_i, e_j)``
    over the real tokens ``j ≠ i``; the loss sums ``P^T (log P^T − log P^S)``.

    Args:
        student: student hidden stack ``(B, K, S, D_s)``.
        teacher: teacher hidden stack ``(B, K, S, D_t)`` (same ``K`` layers, paired in order).
        mask: ``(B, S)`` real tokens.
        reduction: ``"masked_mean"`` (over the ``K·Σ n_b(n_b−1)`` real pairs) or ``"gkd"`` (``K·Σ n_b²``).
        per_sample: return ``(B,)`` per-sequence losses instead of a scalar.
    """
    valid = _check(student, teacher, mask, reduction)
    _, layers, length, _ = student.shape
    off_diagonal = ~torch.eye(length, dtype=torch.bool, device=valid.device)
    keep = valid[:, None, :, None] & valid[:, None, None, :] & off_diagonal  # (B, 1, S, S)
    kl = _masked_kl(_cosines(teacher), _cosines(student), keep.expand(-1, layers, -1, -1))
    n = valid.sum(dim=1).float()
    count = layers * (n * n if reduction == "gkd" else n * (n - 1))
    return _finish(kl.sum(dim=(1, 2, 3)), count, per_sample)


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


class _Windows(torch.autograd.Function):
    """``gram[..., index[i, a], index[i, a']]`` for :func:`window_indices`' clamped windows, as a view.

    Replicate-padding the ``(…, S, S)`` Gram matrix by ``r`` turns every window into the square
    block ``padded[i : i + w, i : i + w]``, so the ``(…, S, w, w)`` result is a strided view of the
    padded matrix instead of an advanced-index gather (a slow full write). Backward adds the
    gradient back band by band (``w`` non-overlapping strided views), then folds the padding.
    """

    @staticmethod
    def forward(ctx, gram: Tensor, radius: int) -> Tensor:
        ctx.radius, ctx.shape = radius, gram.shape
        padded = F.pad(gram.flatten(0, -3), (radius,) * 4, mode="replicate")  # (N, S + 2r, S + 2r)
        n, rows, _ = padded.shape
        size, width = gram.shape[-1], 2 * radius + 1
        view = padded.as_strided((n, size, width, width), (rows * rows, rows + 1, rows, 1))
        return view.unflatten(0, gram.shape[:-2])

    @staticmethod
    def backward(ctx, grad: Tensor):
        radius, shape = ctx.radius, ctx.shape
        size, width = shape[-1], 2 * radius + 1
        grad = grad.reshape(-1, size, width, width)
        rows = size + 2 * radius
        padded = grad.new_zeros(grad.shape[0], rows, rows)
        for a in range(width):  # row a of every window: the entries padded[i + a, i + a'] (distinct)
            padded.as_strided((grad.shape[0], size, width), (rows * rows, rows + 1, 1), a * rows).add_(grad[:, :, a, :])
        source = padded.new_empty(grad.shape[0], size, size)  # shape only: the unpadded size
        return torch.ops.aten.replication_pad2d_backward(padded, source, [radius] * 4).view(shape), None


def word_relation_angle(
    student: Tensor,
    teacher: Tensor,
    mask: Tensor,
    window_size: int = 21,
    reduction: RelationReduction = "masked_mean",
    per_sample: bool = False,
) -> Tensor:
    """WR-Angle: squared difference of the angles each token forms with pairs of its window neighbours.

    ``A_i[a, a'] = ⟨n(e_i − e_{i−r+a}), n(e_i − e_{i−r+a'})⟩`` for ``a, a' = 0…w−1`` (positions clamped
    to the sequence); the loss sums ``(A^S − A^T)²`` over real centres ``i`` — and, with
    ``"masked_mean"``, over real neighbours only.

    Args:
        student: student hidden stack ``(B, K, S, D_s)``.
        teacher: teacher hidden stack ``(B, K, S, D_t)``.
        mask: ``(B, S)`` real tokens.
        window_size: odd window width ``w`` (the centre is included: its angle entries are 0).
        reduction: ``"masked_mean"`` or ``"gkd"`` (``K·w²·Σ n_b``, padded neighbours included).
        per_sample: return ``(B,)`` per-sequence losses.
    """
    valid = _check(student, teacher, mask, reduction)
    _, layers, length, _ = student.shape
    index, at_centre = window_indices(length, window_size, valid.device)
    positions = torch.arange(length, device=valid.device)
    weights = valid[:, None, :, None].float()

    # Entries outside the sum are zeroed inside both angle sets, so they drop out of the difference.
    keep = valid[:, :, None]  # (B, S, 1): real centres
    if reduction == "masked_mean":
        keep = keep & valid[:, index]  # (B, S, w): and real neighbours
    keep = keep[:, None]  # broadcast over layers

    def angles(x: Tensor) -> Tensor:  # (B, K, S, D) → (B, K, S, w, w)
        centred = _centred(x, dim=2, weights=weights)
        gram = float_gram(centred)
        block = _Windows.apply(gram, (window_size - 1) // 2)  # windows as a view, not a gather
        return angles_from_gram(gram, positions, index, at_centre, keep, block=block)

    total = (angles(student) - angles(teacher)).pow(2).sum(dim=(1, 2, 3, 4))
    if reduction == "gkd":
        count = layers * window_size**2 * valid.sum(dim=1).float()
    else:
        count = layers * keep.sum(dim=(1, 3)).float().pow(2).sum(dim=1)  # K · Σ_centres (real neighbours)²
    return _finish(total, count, per_sample)


def _per_token_layers(x: Tensor) -> Tensor:
    """``(B, K, S, D)`` → ``(B, S, K, D)``: each token's trajectory through the layers."""
    return x.float().transpose(1, 2)


def layer_relation_distance(
    student: Tensor, teacher: Tensor, mask: Tensor, reduction: RelationReduction = "masked_mean", per_sample: bool = False
) -> Tensor:
    """LTR-Dist: KL between the models' softmaxed layer-pair cosine rows, per real token.

    For token ``(b, i)`` and layer ``k``: ``Q_k(k') = softmax_{k' ≠ k} cos(e_k, e_k')``.

    Args:
        student: student hidden stack ``(B, K, S, D_s)``.
        teacher: teacher hidden stack ``(B, K, S, D_t)``.
        mask: ``(B, S)`` real tokens.
        reduction: ``"masked_mean"`` (``K(K−1)·Σ n_b``) or ``"gkd"`` (``K²·Σ n_b``).
        per_sample: return ``(B,)`` per-sequence losses.
    """
    valid = _check(student, teacher, mask, reduction)
    layers = student.shape[1]
    off_diagonal = ~torch.eye(layers, dtype=torch.bool, device=valid.device)
    keep = valid[:, :, None, None] & off_diagonal  # (B, S, K, K)
    kl = _masked_kl(_cosines(_per_token_layers(teacher)), _cosines(_per_token_layers(student)), keep)
    n = valid.sum(dim=1).float()
    count = n * (layers * layers if reduction == "gkd" else layers * (layers - 1))
    return _finish(kl.sum(dim=(1, 2, 3)), count, per_sample)


def layer_relation_angle(
    student: Tensor, teacher: Tensor, mask: Tensor, reduction: RelationReduction = "masked_mean", per_sample: bool = False
) -> Tensor:
    """LTR-Angle: squared difference of the angles between a token's layer vectors.

    ``A[k, k', k''] = ⟨n(e_k' − e_k), n(e_k'' − e_k)⟩`` over all layer triples of a real token
    (entries with ``k' = k`` or ``k'' = k`` are 0 and are counted, as in the reference).

    Args:
        student: student hidden stack ``(B, K, S, D_s)``.
        teacher: teacher hidden stack ``(B, K, S, D_t)``.
        mask: ``(B, S)`` real tokens.
        reduction: ``"masked_mean"`` or ``"gkd"``; both divide by ``K³·Σ n_b``.
        per_sample: return ``(B,)`` per-sequence losses.
    """
    valid = _check(student, teacher, mask, reduction)
    layers = student.shape[1]
    vertices = torch.arange(layers, device=valid.device)
    ends = vertices[None, :].expand(layers, layers)
    at_vertex = ends == vertices[:, None]

    real = valid[:, :, None, None]  # (B, S, 1, 1): padded tokens' angles are zeroed in both models

    def angles(x: Tensor) -> Tensor:  # (B, K, S, D) → (B, S, K, K, K)
        centred = _centred(_per_token_layers(x), dim=2)
        return angles_from_gram(float_gram(centred), vertices, ends, at_vertex, real)

    total = (angles(student) - angles(teacher)).pow(2).sum(dim=(1, 2, 3, 4))
    count = layers**3 * valid.sum(dim=1).float()
    return _finish(total, count, per_sample)

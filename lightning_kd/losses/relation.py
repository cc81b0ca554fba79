"""Contextual relation losses of CKD: word relations and layer-transforming relations.

Park, Kim and Yang (2021), "Distilling Linguistic Context for Language Model Compression", EMNLP.

Every relation is computed *inside* one model (cosines between its own vectors, angles between its
own difference vectors), so student and teacher widths may differ and no projection is needed.

Shapes: a *hidden stack* is ``(B, K, S, D)`` — ``K`` hidden states (embeddings and layers) of a
batch of ``B`` sequences of ``S`` tokens; the student's and the teacher's ``D`` may differ.
``mask`` is ``(B, S)``, true (or 1) at real tokens. Teacher inputs are expected without a graph.

Precision. Everything runs in float32, matrix products included even under autocast (float64 inputs
stay float64, for checks).

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
``B·K·S·S`` floats plus one cache-sized chunk rather than ``B·K·S·w·D`` (about 3.7 GB in the
reference's worst case); see :mod:`lightning_kd.losses.window_angle` for its fused kernel.
Vectors are centred first, which leaves every difference unchanged and keeps float32 cancellation
small; a difference shorter than ~0.3 % of the vectors' scale counts as the zero vector (cosine 0,
as the reference's ``normalize`` gives for equal vectors).

One matrix product per model and level. The cosines of the distance terms need the *raw* Gram
matrix, the angles the *centred* one; with ``μ`` the mean, ``⟨x_i, x_j⟩ = ⟨x_i − μ, x_j − μ⟩ + u_i + u_j
+ |μ|²`` (``u_i = ⟨x_i − μ, μ⟩``), so the raw matrix follows from the centred one in three cheap passes,
as precise as a direct product (the rounding is relative to ``|x|²`` either way).
:func:`contextual_relations` computes any set of the four terms sharing these products.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from lightning_kd.losses.window_angle import EPS, at_least_float32, inverse_difference_lengths, window_angle_gap, window_indices

RelationReduction = Literal["masked_mean", "gkd"]
RelationTerm = Literal["word_distance", "word_angle", "layer_distance", "layer_angle"]
RELATION_TERMS: tuple[str, ...] = ("word_distance", "word_angle", "layer_distance", "layer_angle")

_FILL = -1e4  # logit of an excluded entry: exp underflows to exactly 0 next to cosines in [-1, 1]


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
        x = at_least_float32(x)
        return x @ x.transpose(-1, -2)


class _GramPair(torch.autograd.Function):
    """``(C Cᵀ, (C + μ)(C + μ)ᵀ)`` of centred vectors ``C`` and their constant mean ``μ``.

    Forward: one matrix product (the raw matrix is the centred one plus ``u_i + u_j + |μ|²``).
    Backward: one matrix product for both outputs, using their symmetry, instead of autograd's four:
    ``∂C = (g_c + g_cᵀ + g_r + g_rᵀ) C + rowsum(g_r + g_rᵀ) μ``.
    """

    @staticmethod
    def forward(ctx, centred: Tensor, mean: Tensor, with_raw: bool):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(centred, mean)
        gram = centred @ centred.transpose(-1, -2)
        if not with_raw:
            return gram, None
        offset = centred @ mean.transpose(-1, -2)  # (…, M, 1)
        return gram, gram + offset + offset.transpose(-1, -2) + (mean * mean).sum(-1, keepdim=True)

    @staticmethod
    def backward(ctx, grad_centred: Tensor | None, grad_raw: Tensor | None):
        centred, mean = ctx.saved_tensors
        parts = [g + g.transpose(-1, -2) for g in (grad_centred, grad_raw) if g is not None]
        if not parts:
            return None, None, None
        grad = sum(parts[1:], parts[0]) @ centred
        if grad_raw is not None:
            grad += parts[-1].sum(-1, keepdim=True) * mean
        return grad, None, None


@dataclass
class Grams:
    """Gram matrices of vectors ``x`` ``(…, M, D)`` sharing one matrix product.

    ``centred[i, j] = ⟨x_i − μ, x_j − μ⟩`` (``μ`` their weighted mean) feeds the angles; ``raw[i, j] =
    ⟨x_i, x_j⟩`` the cosines. ``μ`` is a constant for autograd: the angles are exactly invariant to it
    and the raw matrix is built as ``(x − μ + μ)(x − μ + μ)ᵀ``, so no gradient is lost.
    """

    centred: Tensor  # (…, M, M)
    raw: Tensor | None  # (…, M, M), when asked for

    @classmethod
    def of(cls, x: Tensor, weights: Tensor | None = None, with_raw: bool = True) -> Grams:
        """``weights`` ``(…, M)`` (broadcastable): 0 for vectors left out of the mean (padding)."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = at_least_float32(x)
            with torch.no_grad():
                if weights is None:
                    mean = x.mean(dim=-2, keepdim=True)
                else:  # the weighted sum as a matrix product: no (…, M, D)-sized temporary
                    weights = weights.to(x.dtype)[..., None, :]
                    mean = (weights @ x) / weights.sum(dim=-1, keepdim=True).clamp_min(1.0)
            centred, raw = _GramPair.apply(x - mean, mean, with_raw)
            return cls(centred, raw)


def _cosines(gram: Tensor) -> Tensor:
    """Pairwise cosines from a raw Gram matrix ``(…, M, M)``."""
    # Scaling the Gram matrix by the inverse norms (its diagonal) equals normalising the vectors first.
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


def angles_from_gram(gram: Tensor, vertices: Tensor, ends: Tensor, at_vertex: Tensor, keep: Tensor | None = None) -> Tensor:
    """Cosines of the angles at each vertex between pairs of end points, from a Gram matrix.

    Args:
        gram: ``(..., M, M)`` inner products of ``M`` vectors (centred, so cancellation is small).
        vertices: ``(P,)`` long, the vertex of each of ``P`` angle sets.
        ends: ``(P, E)`` long, the end points of each set.
        at_vertex: ``(P, E)`` bool, end point equals its vertex (difference exactly zero).
        keep: optional bool, broadcastable to ``(..., P, E)``: end points to keep; the entries of
            a dropped end point are 0 (so masked entries vanish from a difference of two angle sets).

    Returns:
        ``(..., P, E, E)``: ``⟨n(x_e − x_v), n(x_e' − x_v)⟩`` with ``n`` the L2 normalisation; 0 where
        either difference is (numerically) the zero vector or either end point is dropped.
    """
    g_vv = gram[..., vertices, vertices]  # (..., P)
    g_ve = gram[..., vertices[:, None], ends]  # (..., P, E)
    g_ee_diagonal = gram[..., ends, ends]  # (..., P, E)
    dropped = at_vertex if keep is None else at_vertex | ~keep
    inverse = inverse_difference_lengths(g_vv, g_ve, g_ee_diagonal, dropped)
    # ⟨x_e − x_v, x_e' − x_v⟩ = g_ee' − g_ve − (g_ve' − g_vv): two passes over the large tensor.
    block = gram[..., ends[:, :, None], ends[:, None, :]]
    dots = block - g_ve[..., :, None] - (g_ve - g_vv[..., None])[..., None, :]
    return dots * inverse[..., :, None] * inverse[..., None, :]


# ---------------------------------------------------------------------------- the four terms from Gram matrices
def _word_distance(student: Grams, teacher: Grams, valid: Tensor, reduction: str, per_sample: bool) -> Tensor:
    layers, length = student.centred.shape[1], student.centred.shape[-1]
    off_diagonal = ~torch.eye(length, dtype=torch.bool, device=valid.device)
    keep = valid[:, None, :, None] & valid[:, None, None, :] & off_diagonal  # (B, 1, S, S)
    kl = _masked_kl(_cosines(teacher.raw), _cosines(student.raw), keep.expand(-1, layers, -1, -1))
    n = valid.sum(dim=1).float()
    count = layers * (n * n if reduction == "gkd" else n * (n - 1))
    return _finish(kl.sum(dim=(1, 2, 3)), count, per_sample)


def _word_angle(student: Grams, teacher: Grams, valid: Tensor, window_size: int, reduction: str, per_sample: bool) -> Tensor:
    batch, layers, length = student.centred.shape[:3]
    index, _ = window_indices(length, window_size, valid.device)
    # Entries outside the sum are zeroed inside both angle sets, so they drop out of the difference.
    keep = valid[:, :, None].expand(-1, -1, window_size)  # (B, S, w): real centres
    if reduction == "masked_mean":
        keep = keep & valid[:, index]  # and real neighbours
    rows = keep[:, None].expand(-1, layers, -1, -1).flatten(0, 1)  # (B·K, S, w)
    gaps = window_angle_gap(student.centred.flatten(0, 1), teacher.centred.flatten(0, 1), rows, window_size)
    total = gaps.view(batch, layers).sum(dim=1)
    if reduction == "gkd":
        count = layers * window_size**2 * valid.sum(dim=1).float()
    else:
        count = layers * keep.sum(dim=2).float().pow(2).sum(dim=1)  # K · Σ_centres (real neighbours)²
    return _finish(total, count, per_sample)


def _layer_distance(student: Grams, teacher: Grams, valid: Tensor, reduction: str, per_sample: bool) -> Tensor:
    layers = student.centred.shape[-1]
    off_diagonal = ~torch.eye(layers, dtype=torch.bool, device=valid.device)
    keep = valid[:, :, None, None] & off_diagonal  # (B, S, K, K)
    kl = _masked_kl(_cosines(teacher.raw), _cosines(student.raw), keep)
    n = valid.sum(dim=1).float()
    count = n * (layers * layers if reduction == "gkd" else layers * (layers - 1))
    return _finish(kl.sum(dim=(1, 2, 3)), count, per_sample)


def _layer_angle(student: Grams, teacher: Grams, valid: Tensor, per_sample: bool) -> Tensor:
    layers = student.centred.shape[-1]
    vertices = torch.arange(layers, device=valid.device)
    ends = vertices[None, :].expand(layers, layers)
    at_vertex = ends == vertices[:, None]
    real = valid[:, :, None, None]  # (B, S, 1, 1): padded tokens' angles are zeroed in both models
    gap = angles_from_gram(student.centred, vertices, ends, at_vertex, real) - angles_from_gram(teacher.centred, vertices, ends, at_vertex, real)
    total = gap.pow(2).sum(dim=(1, 2, 3, 4))
    return _finish(total, layers**3 * valid.sum(dim=1).float(), per_sample)


def _word_grams(x: Tensor, valid: Tensor, with_raw: bool) -> Grams:
    """Per layer, the token Gram matrix ``(B, K, S, S)``, centred on the mean of the real tokens."""
    return Grams.of(x, weights=valid[:, None, :], with_raw=with_raw)


def _layer_grams(x: Tensor, with_raw: bool) -> Grams:
    """Per token, the layer Gram matrix ``(B, S, K, K)`` of its trajectory through the layers."""
    # One copy into the (B, S, K, D) layout: the products below then run on plain row-major blocks.
    return Grams.of(x.transpose(1, 2).contiguous(), with_raw=with_raw)


# ---------------------------------------------------------------------------- public functions
def contextual_relations(
    student: Tensor,
    teacher: Tensor,
    mask: Tensor,
    terms: Collection[RelationTerm] = RELATION_TERMS,
    window_size: int = 21,
    reduction: RelationReduction = "masked_mean",
    per_sample: bool = False,
) -> dict[str, Tensor]:
    """Any subset of CKD's four relation terms, sharing one Gram product per model and level.

    Args:
        student: student hidden stack ``(B, K, S, D_s)``.
        teacher: teacher hidden stack ``(B, K, S, D_t)`` (same ``K`` layers, paired in order).
        mask: ``(B, S)`` real tokens.
        terms: names among ``word_distance``, ``word_angle``, ``layer_distance``, ``layer_angle``.
        window_size: odd word-angle window width ``w``.
        reduction: ``"masked_mean"`` or ``"gkd"`` (see the module docstring).
        per_sample: ``(B,)`` per-sequence losses instead of scalars.

    Returns:
        ``{term: loss}`` for the requested terms, each equal to its single-term function below.
    """
    unknown = set(terms) - set(RELATION_TERMS)
    if unknown:
        raise ValueError(f"Unknown relation term(s) {sorted(unknown)}; choose among {list(RELATION_TERMS)}.")
    valid = _check(student, teacher, mask, reduction)
    if "word_angle" in terms:
        window_indices(1, window_size)  # validates window_size before any Gram product
    out: dict[str, Tensor] = {}
    if "word_distance" in terms or "word_angle" in terms:
        raw = "word_distance" in terms
        s, t = _word_grams(student, valid, raw), _word_grams(teacher, valid, raw)
        if "word_distance" in terms:
            out["word_distance"] = _word_distance(s, t, valid, reduction, per_sample)
        if "word_angle" in terms:
            out["word_angle"] = _word_angle(s, t, valid, window_size, reduction, per_sample)
    if "layer_distance" in terms or "layer_angle" in terms:
        raw = "layer_distance" in terms
        s, t = _layer_grams(student, raw), _layer_grams(teacher, raw)
        if "layer_distance" in terms:
            out["layer_distance"] = _layer_distance(s, t, valid, reduction, per_sample)
        if "layer_angle" in terms:
            out["layer_angle"] = _layer_angle(s, t, valid, per_sample)
    return {name: out[name] for name in RELATION_TERMS if name in out}


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
    return contextual_relations(student, teacher, mask, ["word_distance"], reduction=reduction, per_sample=per_sample)["word_distance"]


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
    return contextual_relations(student, teacher, mask, ["word_angle"], window_size, reduction, per_sample)["word_angle"]


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
    return contextual_relations(student, teacher, mask, ["layer_distance"], reduction=reduction, per_sample=per_sample)["layer_distance"]


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
    return contextual_relations(student, teacher, mask, ["layer_angle"], reduction=reduction, per_sample=per_sample)["layer_angle"]

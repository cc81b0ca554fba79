"""Multi-granularity structural losses of MGSKD: token/span pair and triplet relations, sample angles.

Liu, Tao, Feng and Zhao (2022), "Multi-Granularity Structural Knowledge Distillation for Language Model
Compression", ACL.

Relations are computed inside each model, so student and teacher widths may differ (each must be
divisible by the number of relation heads). Shapes: ``x`` is ``(B, N, D)`` — token vectors, or span
vectors from :func:`span_pool` — and ``mask`` is ``(B, N)``, true at real tokens/spans. Teacher
inputs are expected without a graph. Math runs in float32 (also under autocast). Every loss returns a finite scalar (0 with a graph when no
entry is valid), so short sequences, a batch of one and all-padding rows are safe.

Randomness: :func:`random_span_lengths` draws from ``generator``, or from torch's global CPU
generator when ``None`` (the one ``seed_everything`` seeds). Anchor and neighbour selection is a
deterministic top-k on the teacher's attention-like relations.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_kd.core.pooling import pool
from lightning_kd.losses.relation import float_gram
from lightning_kd.losses.window_angle import inverse_difference_lengths

EPS = 1e-12
_FILL = -1e4  # the reference's fill for excluded relation logits before the anchor softmax


def _heads(x: Tensor, heads: int) -> Tensor:
    """``(..., D)`` → ``(..., heads, D/heads)``."""
    if x.shape[-1] % heads:
        raise ValueError(f"Width {x.shape[-1]} is not divisible by {heads} relation heads.")
    return x.float().unflatten(-1, (heads, x.shape[-1] // heads))


def head_relations(x: Tensor, mask: Tensor, heads: int) -> Tensor:
    """Scaled dot products per head, zero at pairs involving padding: ``(B, N, D)`` → ``(B, R, N, N)``.

    ``P_{b,r,i,j} = m_i m_j ⟨x_i^{(r)}, x_j^{(r)}⟩ / √(D/R)``.
    """
    # m_i m_j ⟨x_i, x_j⟩ / √d = ⟨m_i x_i / d^¼, m_j x_j / d^¼⟩: masking and scaling the (B, N, D)
    # vectors costs a pass over N·D numbers instead of two over R·N² relations.
    scale = (x.shape[-1] // heads) ** -0.25
    masked = x.float() * (mask.to(torch.float32)[..., None] * scale)
    return float_gram(_heads(masked, heads).transpose(1, 2))  # (B, R, N, N)


def pair_relation_mse(student_relations: Tensor, teacher_relations: Tensor, mask: Tensor) -> Tensor:
    """``Σ (P^S − P^T)² / Σ_{b,r,i,j} m_i m_j`` for relations from :func:`head_relations`."""
    valid = mask.float()
    count = student_relations.shape[1] * (valid.sum(dim=1) ** 2).sum()
    # One fused pass (and one in backward) instead of separate difference, square and sum passes.
    squared = F.mse_loss(student_relations.float(), teacher_relations.float(), reduction="sum")
    return squared / count.clamp_min(1.0)


def triplet_anchors(teacher_relations: Tensor, mask: Tensor, anchors: int, neighbours: int) -> tuple[Tensor, Tensor]:
    """The teacher's most attended tokens and, for each, its most attending-to neighbours.

    ``A = softmax_j`` of the relations (pairs with padding filled with −10⁴) times the pair mask;
    anchors are the top-``anchors`` of ``Σ_{r,i} A[:, r, i, j]`` and the neighbours of anchor ``a``
    the top-``neighbours`` of ``Σ_r A[:, r, a, j]`` with ``j ≠ a`` (diagonal zeroed). Both counts are
    capped at ``N``; when a row has fewer real tokens, padding (or the anchor itself) fills the
    remaining slots and :func:`anchor_angle_loss` masks it.

    Args:
        teacher_relations: ``(B, R, N, N)`` from :func:`head_relations`.
        mask: ``(B, N)`` real tokens.
        anchors: ``k1``, anchors per sequence.
        neighbours: ``k2``, neighbours per anchor.

    Returns:
        ``(anchor_index (B, k1), neighbour_index (B, k1, k2))``, long.
    """
    with torch.no_grad():
        valid = mask.bool()
        length = teacher_relations.shape[-1]
        # Filling padded columns is enough before the softmax: a padded row is zeroed just after
        # (its entries, like every masked pair, are multiplied by 0 either way). In place, as
        # nothing here needs a graph: one pass per step over the (B, R, N, N) relations.
        attention = teacher_relations.float().masked_fill(~valid[:, None, None, :], _FILL).softmax(dim=-1)
        attention.mul_(valid[:, None, :, None])
        anchor_index = attention.sum(dim=(1, 2)).topk(min(anchors, length), dim=-1).indices
        # Only the anchors' rows are needed for the neighbours: gather them before summing the heads.
        rows = attention.gather(2, anchor_index[:, None, :, None].expand(-1, attention.shape[1], -1, length)).sum(dim=1)
        rows.masked_fill_(anchor_index[:, :, None] == torch.arange(length, device=rows.device), 0.0)  # j ≠ anchor
        return anchor_index, rows.topk(min(neighbours, length), dim=-1).indices


def _gather_tokens(x: Tensor, index: Tensor) -> Tensor:
    """``x[b, index[b, ...]]``: ``(B, N, D)`` with ``index (B, *I)`` → ``(B, *I, D)``."""
    flat = index.reshape(index.shape[0], -1)
    picked = x.gather(1, flat[:, :, None].expand(-1, -1, x.shape[-1]))
    return picked.reshape(*index.shape, x.shape[-1])


def anchor_angles(x: Tensor, anchor_index: Tensor, neighbour_index: Tensor) -> Tensor:
    """``Θ[b, p, q, q'] = ⟨n(x_a − x_{n_q}), n(x_a − x_{n_q'})⟩`` for anchor ``a = anchor_index[b, p]``.

    Returns ``(B, k1, k2, k2)``; computed on the full width (one head).

    Built from the ``(B, N, N)`` Gram matrix of the (centred) vectors, as in
    :func:`lightning_kd.losses.relation.angles_from_gram`, instead of materialising the
    ``(B, k1, k2, D)`` difference vectors: ``⟨x_a − x_q, x_a − x_q'⟩ = G_qq' − G_aq − G_aq' + G_aa``.
    Centring (by the mean over all positions, detached) leaves every difference unchanged and keeps
    float32 cancellation small. A neighbour equal to its anchor — or whose difference is shorter than
    ~0.3 % of the vectors' scale, i.e. (numerically) the zero vector — gets ``Θ = 0``, as ``normalize``
    gives for a zero difference.
    """
    x = x.float()
    gram = float_gram(x - x.mean(dim=1, keepdim=True).detach()).flatten(1)  # (B, N·N)
    length = x.shape[1]
    anchor = anchor_index[:, :, None]  # (B, k1, 1)

    def pick(index: Tensor) -> Tensor:  # gram[b, i, j] at flat positions i·N + j, keeping index's shape
        return gram.gather(1, index.flatten(1)).view_as(index)

    g_aa = pick(anchor * (length + 1))  # (B, k1, 1)
    g_aq = pick(anchor * length + neighbour_index)  # (B, k1, k2)
    g_qq = pick(neighbour_index * (length + 1))  # (B, k1, k2)
    inverse = inverse_difference_lengths(g_aa.squeeze(-1), g_aq, g_qq, neighbour_index == anchor)  # 1/|x_a − x_q|
    g_qq_pairs = pick(neighbour_index[..., :, None] * length + neighbour_index[..., None, :])  # (B, k1, k2, k2)
    dots = g_qq_pairs - g_aq[..., :, None] - (g_aq - g_aa)[..., None, :]
    return dots * inverse[..., :, None] * inverse[..., None, :]


def anchor_angle_loss(student: Tensor, teacher: Tensor, mask: Tensor, anchor_index: Tensor, neighbour_index: Tensor) -> Tensor:
    """Smooth-L1 (β = 1) between the models' anchor angles over valid triplets.

    A triplet is valid when the anchor and both neighbours are real tokens, ``q ≠ q'``, and the
    model's own ``Θ ≠ 0``; each model's angles are zeroed outside its own mask, and the sum is
    divided by the number of the student's valid triplets.
    """
    valid = mask.bool()
    anchor_ok = valid.gather(1, anchor_index)
    neighbour_ok = valid.gather(1, neighbour_index.flatten(1)).view_as(neighbour_index)
    k2 = neighbour_index.shape[-1]
    distinct = ~torch.eye(k2, dtype=torch.bool, device=valid.device)
    base = anchor_ok[:, :, None, None] & neighbour_ok[:, :, :, None] & neighbour_ok[:, :, None, :] & distinct
    theta_s = anchor_angles(student, anchor_index, neighbour_index)
    theta_t = anchor_angles(teacher, anchor_index, neighbour_index)
    keep_s, keep_t = base & theta_s.ne(0), base & theta_t.ne(0)
    loss = F.smooth_l1_loss(theta_s * keep_s, theta_t * keep_t, reduction="none", beta=1.0)
    return loss.sum() / keep_s.sum().clamp_min(1)


def token_structure_loss(
    student: Tensor, teacher: Tensor, mask: Tensor, heads: int, anchors: int, neighbours: int
) -> tuple[Tensor, Tensor]:
    """MGSKD's token- (or span-) level loss as its two parts ``(pair, triplet)``; ``L_tok`` is their sum.

    Args:
        student: ``(B, N, D_s)`` student token or span vectors.
        teacher: ``(B, N, D_t)`` teacher vectors.
        mask: ``(B, N)`` real tokens/spans.
        heads: relation heads ``R`` of the pair term.
        anchors: ``k1``.
        neighbours: ``k2``.
    """
    relations_t = head_relations(teacher, mask, heads)
    pair = pair_relation_mse(head_relations(student, mask, heads), relations_t, mask)
    anchor_index, neighbour_index = triplet_anchors(relations_t, mask, anchors, neighbours)
    return pair, anchor_angle_loss(student, teacher, mask, anchor_index, neighbour_index)


def sample_angles(pooled: Tensor, heads: int) -> Tensor:
    """``Ψ[r, i, j, k] = ⟨n(p_j − p_i), n(p_k − p_i)⟩`` per head: ``(B, D)`` → ``(R, B, B, B)``."""
    split = _heads(pooled, heads)  # (B, R, d)
    unit = F.normalize(split[None, :, :, :] - split[:, None, :, :], dim=-1, eps=EPS)  # [i, j] = p_j − p_i
    return float_gram(unit.permute(2, 0, 1, 3))  # (R, B_i, B_j, B_k)


def sample_structure_loss(student: Tensor, teacher: Tensor, mask: Tensor, heads: int) -> Tensor:
    """MGSKD's sample-level loss on sequences mean-pooled over their real tokens (the paper's pooling);
    see :func:`pooled_sample_structure_loss`.

    Args:
        student: ``(B, N, D_s)`` student hidden states.
        teacher: ``(B, N, D_t)`` teacher hidden states.
        mask: ``(B, N)`` real tokens.
        heads: relation heads ``R``.
    """
    rows = mask.bool().any(dim=1)
    return pooled_sample_structure_loss(pool(student.float(), mask, "mean"), pool(teacher.float(), mask, "mean"), rows, heads)


def pooled_sample_structure_loss(student: Tensor, teacher: Tensor, rows: Tensor, heads: int) -> Tensor:
    """MGSKD's sample-level loss: smooth-L1 between the per-head angles of every triplet of pooled sequences.

    Triplets involving a row without real tokens are left out; otherwise this is the mean over all
    ``R·B³`` entries, as in the reference (entries with ``j = i`` or ``k = i`` are 0 and counted). A
    batch of one gives 0.

    Args:
        student: ``(B, D_s)`` pooled student vectors (see :mod:`lightning_kd.core.pooling`).
        teacher: ``(B, D_t)`` pooled teacher vectors.
        rows: ``(B,)`` true for rows holding at least one real token.
        heads: relation heads ``R``.
    """
    psi_s = sample_angles(student, heads)
    psi_t = sample_angles(teacher, heads)
    keep = rows[:, None, None] & rows[None, :, None] & rows[None, None, :]
    loss = F.smooth_l1_loss(psi_s, psi_t, reduction="none", beta=1.0)
    count = heads * rows.sum().float() ** 3
    return torch.where(keep, loss, 0.0).sum() / count.clamp_min(1.0)


def random_span_lengths(length: int, rate: float, generator: torch.Generator | None = None) -> list[int]:
    """Cut ``length`` positions into ``⌊length·rate⌋`` consecutive random spans (the reference's phrases).

    Draw ``a_j = |N(0, 1)|``; ``ℓ_j = ⌊a_j / Σa · (length − n)⌋ + 1``; then add 1 to the last
    ``d = length − Σℓ`` spans so the spans cover the sequence exactly. Returns ``[]`` when
    ``length·rate < 1`` (no span).

    Args:
        length: padded sequence length ``N``.
        rate: spans per position, in ``(0, 1]``.
        generator: CPU generator to draw from (``None``: torch's global generator).
    """
    if not 0 < rate <= 1:
        raise ValueError(f"span rate must be in (0, 1], got {rate}.")
    count = int(length * rate)
    if count == 0:
        return []
    draws = torch.randn(count, generator=generator, dtype=torch.float64).abs()
    if draws.sum() == 0:
        draws = torch.ones_like(draws)
    lengths = ((draws / draws.sum() * (length - count)).floor().long() + 1).tolist()
    short = length - sum(lengths)
    for j in range(count - short, count) if short > 0 else ():
        lengths[j] += 1
    while sum(lengths) > length:  # only reachable through float rounding
        lengths[lengths.index(max(lengths))] -= 1
    return lengths


def span_pool(x: Tensor, mask: Tensor, lengths: list[int], include_padding: bool = False) -> tuple[Tensor, Tensor]:
    """Mean vector of each span and the span mask.

    Args:
        x: ``(B, N, D)`` token vectors.
        mask: ``(B, N)`` real tokens.
        lengths: span lengths summing to ``N`` (from :func:`random_span_lengths`).
        include_padding: average over every position of a span, padding included (the reference),
            instead of over its real tokens only.

    Returns:
        ``(spans (B, n, D), span_mask (B, n))``; a span is real when it holds a real token.
    """
    if sum(lengths) != x.shape[1]:
        raise ValueError(f"Span lengths sum to {sum(lengths)} but the sequence has {x.shape[1]} positions.")
    segment = torch.repeat_interleave(torch.arange(len(lengths), device=x.device), torch.tensor(lengths, device=x.device))
    member = F.one_hot(segment, len(lengths)).T.float()  # (n, N)
    real = member[None] * mask.float()[:, None, :]  # (B, n, N)
    weights = member[None].expand_as(real) if include_padding else real
    with torch.autocast(device_type=x.device.type, enabled=False):
        spans = weights @ x.float() / weights.sum(dim=-1, keepdim=True).clamp_min(1.0)
    return spans, real.sum(dim=-1) > 0

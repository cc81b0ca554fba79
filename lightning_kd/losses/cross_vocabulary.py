"""Per-row distillation distances between a student and a teacher with different vocabularies.

Cross-tokenizer distillation (issue #25) compares, at aligned positions
(:func:`lightning_kd.cross_tokenizer.shared_prefix_pairs`), a student row of ``Vs`` logits with a
teacher row of ``Vt`` logits whose columns mean different tokens. Three ways, all per row ``(N,)``,
float32, at temperature ``T`` for both softmaxes (no ``T²`` factor: the caller scales and reduces,
e.g. with :func:`~lightning_kd.losses.rows.reduce_rows`), the teacher always detached:

* :func:`uld_rows` — the Universal Logit Distillation distance (Boizard et al., 2024): both
  probability vectors sorted in decreasing order, the shorter zero-padded, the L1 distance between
  them. It needs no token correspondence at all, and so ignores which token is which: it matches the
  shape of the distributions (how peaked, how spread), not their content.
* :func:`matched_divergence_rows` — a soft divergence over tokens that spell the same text in both
  vocabularies (:class:`VocabularyMatch`), plus one bucket per side for the rest of its mass.
* :func:`hybrid_rows` — the matched divergence plus the sorted distance between the unmatched parts.

Sorting a 262,144-wide teacher row is the costly step; the sorted distances run over chunks of rows
and write the student's gradient as they go (a custom autograd function), so memory holds one chunk's
sort at a time plus one gradient the size of the student logits, whatever ``N`` is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from lightning_kd.cross_tokenizer.token_text import vocabulary_keys
from lightning_kd.losses.logits import SoftDivergence, row_divergence
from lightning_kd.losses.topk_teacher import EMPTY

#: Logits per side in one chunk of rows when ``chunk_rows`` is not given (16 MB of float32; the sort
#: adds int64 indices, so about 3× that at its peak).
CHUNK_ELEMENTS = 1 << 22


def _check_rows(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> None:
    """Refuse rows that are not ``(N, V)`` with the same ``N``, or a non-positive temperature."""
    if student_logits.dim() != 2 or teacher_logits.dim() != 2:
        raise ValueError(
            f"Expected (N, Vs) and (N, Vt) logits, got {tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}."
        )
    if student_logits.shape[0] != teacher_logits.shape[0]:
        raise ValueError(f"{student_logits.shape[0]} student rows for {teacher_logits.shape[0]} teacher rows.")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")


def _largest(probs: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``min(k, V)`` largest entries of each row in decreasing order, with their columns."""
    if k >= probs.shape[-1]:
        return probs.sort(dim=-1, descending=True)
    return probs.topk(k, dim=-1, sorted=True)


def _sorted_distance_chunk(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float,
    top: int | None,
    student_columns: Tensor | None,
    teacher_columns: Tensor | None,
    with_grad: bool,
    student_log_scale: Tensor | None = None,
    teacher_log_scale: Tensor | None = None,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Sorted L1 distance of some rows, ``∂L/∂z_s`` when ``with_grad`` (see :func:`uld_rows`), and
    ``∂L/∂log c_s`` when ``student_log_scale`` is given.

    Only the probabilities at ``student_columns`` / ``teacher_columns`` take part (all when ``None``);
    they are not renormalised. Each row's vector is multiplied by its ``c = exp(log_scale)`` (1 when no
    scale is given; ``c > 0`` keeps the sort order). With ``a`` and ``b`` the sorted, padded, scaled
    vectors, ``L = Σ_r |a_r − b_r|`` (+ ``|R_a − R_b|`` for the masses past the top ``m``), so
    ``∂L/∂q_c = c_s·sign(a_r − b_r)`` at the column ``c`` holding ``a_r`` and ``c_s·sign(R_a − R_b)`` at a
    column past the top; the softmax Jacobian then gives ``∂L/∂u = q ⊙ (g − Σ q g)`` with ``u = z/T``; and
    ``∂L/∂log c_s = Σ_c sign_c · c_s q_c``. A tie takes the sort's order and ``sign(0) = 0``, the
    subgradients autograd would take.
    """
    q = torch.softmax(student_logits.float() / temperature, dim=-1)
    p = torch.softmax(teacher_logits.float() / temperature, dim=-1)
    q_part = q if student_columns is None else q.index_select(-1, student_columns)
    p_part = p if teacher_columns is None else p.index_select(-1, teacher_columns)
    student_scale = None if student_log_scale is None else student_log_scale.float().exp().unsqueeze(-1)
    if student_scale is not None:
        q_part = q_part * student_scale
    if teacher_log_scale is not None:
        p_part = p_part * teacher_log_scale.float().exp().unsqueeze(-1)
    width = max(q_part.shape[-1], p_part.shape[-1])
    keep = width if top is None else min(top, width)
    q_top, q_where = _largest(q_part, keep)
    p_top, _ = _largest(p_part, keep)
    diff = F.pad(q_top, (0, keep - q_top.shape[-1])) - F.pad(p_top, (0, keep - p_top.shape[-1]))
    values = diff.abs().sum(dim=-1)
    truncated = keep < width
    if truncated:
        # Past the top m only the two remaining masses are compared: their difference is at most the
        # sum of the differences it replaces (triangle inequality), so this never exceeds the exact value.
        rest = (q_part.sum(dim=-1) - q_top.sum(dim=-1)) - (p_part.sum(dim=-1) - p_top.sum(dim=-1))
        values = values + rest.abs()
    if not with_grad:
        return values, None, None
    if truncated:
        g_part = rest.sign().unsqueeze(-1).expand_as(q_part).contiguous()
    else:
        g_part = torch.zeros_like(q_part)
    g_part.scatter_(-1, q_where, diff[:, : q_top.shape[-1]].sign())
    scale_grad = None if student_scale is None else (g_part * q_part).sum(dim=-1)
    if student_scale is not None:
        g_part = g_part.mul_(student_scale)
    g = g_part if student_columns is None else torch.zeros_like(q).index_copy_(-1, student_columns, g_part)
    grad = g.sub_((q * g).sum(dim=-1, keepdim=True)).mul_(q).div_(temperature)
    return values, grad, scale_grad


class _SortedDistance(torch.autograd.Function):
    """Chunked sorted L1 distance whose backward multiplies a gradient written in the forward pass."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        student_logits: Tensor,
        teacher_logits: Tensor,
        temperature: float,
        chunk_rows: int,
        top: int | None,
        student_columns: Tensor | None,
        teacher_columns: Tensor | None,
        student_log_scale: Tensor | None,
        teacher_log_scale: Tensor | None,
    ) -> Tensor:
        ctx.with_grad = bool(ctx.needs_input_grad[0] or ctx.needs_input_grad[7])
        rows = student_logits.shape[0]
        values = torch.empty(rows, dtype=torch.float32, device=student_logits.device)
        grad = torch.empty_like(student_logits) if ctx.with_grad else None
        scale_grad = torch.empty_like(values) if ctx.with_grad and student_log_scale is not None else None
        for begin in range(0, rows, chunk_rows):
            part = slice(begin, begin + chunk_rows)
            chunk_values, chunk_grad, chunk_scale_grad = _sorted_distance_chunk(
                student_logits[part], teacher_logits[part], temperature, top, student_columns, teacher_columns, ctx.with_grad,
                None if student_log_scale is None else student_log_scale[part],
                None if teacher_log_scale is None else teacher_log_scale[part],
            )
            values[part] = chunk_values
            if grad is not None:
                grad[part] = chunk_grad
            if scale_grad is not None:
                scale_grad[part] = chunk_scale_grad
        ctx.scale_dtype = None if student_log_scale is None else student_log_scale.dtype
        if grad is not None:
            ctx.save_for_backward(grad, scale_grad)
        return values

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_values: Tensor) -> tuple[Tensor | None, ...]:
        if not ctx.with_grad:
            return (None,) * 9
        grad, scale_grad = ctx.saved_tensors
        scaled = (grad.float() * grad_values.float().unsqueeze(-1)).to(grad.dtype)
        scale = None if scale_grad is None else (scale_grad * grad_values.float()).to(ctx.scale_dtype)
        return scaled, None, None, None, None, None, None, scale, None


def _sorted_distance(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float,
    chunk_rows: int | None,
    top: int | None,
    student_columns: Tensor | None = None,
    teacher_columns: Tensor | None = None,
    student_log_scale: Tensor | None = None,
    teacher_log_scale: Tensor | None = None,
) -> Tensor:
    """Validate the chunking arguments and run :class:`_SortedDistance` with the teacher detached."""
    if top is not None and top < 1:
        raise ValueError(f"top must be >= 1 or None, got {top}.")
    if chunk_rows is None:
        chunk_rows = max(1, CHUNK_ELEMENTS // max(student_logits.shape[-1], teacher_logits.shape[-1], 1))
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}.")
    rows = student_logits.shape[0]
    for side, scale in (("student", student_log_scale), ("teacher", teacher_log_scale)):
        if scale is not None and tuple(scale.shape) != (rows,):
            raise ValueError(f"{side}_log_scale must be one value per row, ({rows},); got {tuple(scale.shape)}.")
    return _SortedDistance.apply(
        student_logits, teacher_logits.detach(), float(temperature), int(chunk_rows), top, student_columns, teacher_columns,
        student_log_scale, None if teacher_log_scale is None else teacher_log_scale.detach(),
    )


def uld_rows(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 1.0,
    chunk_rows: int | None = None,
    top: int | None = None,
    student_log_scale: Tensor | None = None,
    teacher_log_scale: Tensor | None = None,
) -> Tensor:
    """The Universal Logit Distillation distance of each row (Boizard et al., 2024).

    ``q = softmax(z_s/T)`` and ``p = softmax(z_t/T)`` are each sorted in decreasing order, the shorter
    zero-padded to ``max(Vs, Vt)``, and ``L = Σ_r |q_(r) − p_(r)|`` (in ``[0, 2]``). It is invariant to
    any permutation of either vocabulary and 0 when the sorted vectors agree.

    With log-scales, each row's vector is first multiplied by its ``exp(log_scale)`` — the probability of
    the rest of a merged span (:mod:`lightning_kd.cross_tokenizer.merged_spans`): ``L = Σ_r |c_s q_(r) − c_t p_(r)|``,
    with the gradient flowing into the student's logits and its log-scale.

    Args:
        student_logits: ``(N, Vs)``; the gradient flows into them only.
        teacher_logits: ``(N, Vt)``, detached here.
        temperature: ``T`` of both softmaxes.
        chunk_rows: rows sorted at once (default: about :data:`CHUNK_ELEMENTS` logits per side).
        top: ``None`` is exact. An integer ``m`` keeps the first ``m`` entries of both sorted (padded)
            vectors and adds ``|R_q − R_p|``, the difference of the masses left past them: an
            approximation from below (never larger than the exact value), exact when ``m >= max(Vs, Vt)``,
            and much cheaper than a full sort (a top-``m`` selection) since the tail of a peaked
            distribution carries little mass.
        student_log_scale: ``(N,)`` natural-log factor of each student row (``None``: 1); the gradient flows into it.
        teacher_log_scale: ``(N,)`` likewise for the teacher (detached here).

    Returns:
        ``(N,)`` float32.
    """
    _check_rows(student_logits, teacher_logits, temperature)
    return _sorted_distance(student_logits, teacher_logits, temperature, chunk_rows, top,
                            student_log_scale=student_log_scale, teacher_log_scale=teacher_log_scale)


@dataclass(frozen=True, eq=False)  # tensors have no truth value to compare fields by
class VocabularyMatch:
    """Pairs of student and teacher token ids that spell the same text.

    ``student_ids[k]`` and ``teacher_ids[k]`` (``(M,)`` int64 each) are one matched token; no id appears
    twice on a side, so the matched tokens plus "any other token" partition each vocabulary.
    """

    student_ids: Tensor
    teacher_ids: Tensor

    def __post_init__(self) -> None:
        student, teacher = self.student_ids, self.teacher_ids
        if student.dim() != 1 or student.shape != teacher.shape:
            raise ValueError(f"student_ids {tuple(student.shape)} and teacher_ids {tuple(teacher.shape)} must be (M,) each.")
        for side, ids in (("student", student), ("teacher", teacher)):
            if ids.dtype != torch.long:
                raise ValueError(f"{side}_ids must be int64, got {ids.dtype}.")
            if ids.numel() and (int(ids.min()) < 0 or ids.unique().numel() != ids.numel()):
                raise ValueError(f"{side}_ids must be distinct non-negative ids (a repeated id would count its mass twice).")

    def __len__(self) -> int:
        return self.student_ids.shape[0]

    @classmethod
    def between(cls, student_tokenizer: Any, teacher_tokenizer: Any) -> VocabularyMatch:
        """Match the two tokenizers' vocabularies on :func:`~lightning_kd.cross_tokenizer.token_key`.

        Each entry is read as ``(starts_word, body bytes)`` under its own tokenizer's convention
        (``Ġ`` byte-level, ``▁`` SentencePiece, ``##`` WordPiece; see
        :mod:`lightning_kd.cross_tokenizer.token_text`); entries with equal keys are matched. Special
        tokens are left out; when several ids of one vocabulary share a key, the lowest id is kept.
        Pairs are ordered by student id.
        """
        student_keys = vocabulary_keys(student_tokenizer)
        teacher_keys = vocabulary_keys(teacher_tokenizer)
        pairs = sorted((index, teacher_keys[key]) for key, index in student_keys.items() if key in teacher_keys)
        ids = torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)
        return cls(ids[:, 0].contiguous(), ids[:, 1].contiguous())

    @classmethod
    def identity(cls, vocab_size: int) -> VocabularyMatch:
        """Every id matched to itself: the two models share one vocabulary."""
        ids = torch.arange(vocab_size, dtype=torch.long)
        return cls(ids, ids.clone())

    def to(self, device: torch.device | str) -> VocabularyMatch:
        """The same match with its ids on ``device``."""
        return VocabularyMatch(self.student_ids.to(device), self.teacher_ids.to(device))

    def check_widths(self, student_width: int, teacher_width: int) -> None:
        """Refuse ids past the logits' widths (a match built for other vocabularies)."""
        for side, ids, width in (("student", self.student_ids, student_width), ("teacher", self.teacher_ids, teacher_width)):
            if ids.numel() and int(ids.max()) >= width:
                raise ValueError(f"The match holds {side} id {int(ids.max())} but the {side} logits have {width} columns.")


def _unmatched(ids: Tensor, width: int) -> Tensor:
    """``(width,)`` bool: the columns outside ``ids``."""
    outside = torch.ones(width, dtype=torch.bool, device=ids.device)
    outside[ids] = False
    return outside


def _bucket_log_probs(log_probs: Tensor, ids: Tensor) -> Tensor:
    """``(N, M + 1)``: the log-probabilities at ``ids``, then the log of the mass on every other column.

    Matched columns are set to :data:`EMPTY` (finite, so an empty rest gives a 0 probability with a 0
    gradient, where ``-inf`` would give NaN through the log-sum-exp) before summing the rest.
    """
    others = log_probs.masked_fill(~_unmatched(ids, log_probs.shape[-1]), EMPTY)
    rest = others.logsumexp(dim=-1, keepdim=True)
    return torch.cat([log_probs.index_select(-1, ids), rest], dim=-1)


def matched_divergence_rows(
    student_logits: Tensor,
    teacher_logits: Tensor,
    match: VocabularyMatch,
    temperature: float = 1.0,
    kind: SoftDivergence = "kl",
    jsd_beta: float = 0.5,
    skew_alpha: float = 0.1,
) -> Tensor:
    """A soft divergence per row between the two distributions over matched tokens plus one bucket.

    Each side's distribution is coarse-grained to ``M + 1`` outcomes: its probability on each matched
    token (``match.student_ids`` / ``match.teacher_ids``, paired by position), and its total mass on all
    its other tokens. Both are proper distributions, compared with ``kind`` as in
    :func:`~lightning_kd.losses.logits.soft_divergence` (``"kl"`` is ``KL(teacher ‖ student)``;
    ``"reverse_kl"``, ``"jsd"`` with ``jsd_beta``, ``"skew_kl"``/``"skew_reverse_kl"`` with
    ``skew_alpha``, ``"ce"``, ``"tvd"`` too; ``"argmax_ce"`` takes the teacher's top outcome, which may be its
    bucket of unmatched tokens).

    **Exact** (the full divergence) when both models share one vocabulary and the match pairs every id
    with itself (:meth:`VocabularyMatch.identity`): the buckets are then empty. With a shared vocabulary
    and a partial match it is a lower bound of the full divergence for the f-divergences (merging
    outcomes never increases one). Across vocabularies it is a coarser comparison: the student is told
    the teacher's probability of each token both can spell and the total for the rest, not how the
    rest spreads.

    Args:
        student_logits: ``(N, Vs)``; the gradient flows into them only.
        teacher_logits: ``(N, Vt)``, detached here.
        match: matched ids, all below ``Vs`` / ``Vt`` (logit columns past a tokenizer's vocabulary,
            e.g. padded embedding rows, fall in the bucket).
        temperature: ``T`` of both softmaxes.
        kind, jsd_beta, skew_alpha: the divergence and its mixture weights.

    Returns:
        ``(N,)`` float32.
    """
    _check_rows(student_logits, teacher_logits, temperature)
    match.check_widths(student_logits.shape[-1], teacher_logits.shape[-1])
    match = match.to(student_logits.device)
    divergence = row_divergence(kind, jsd_beta, skew_alpha)
    log_q = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    values, _ = divergence(_bucket_log_probs(log_q, match.student_ids), _bucket_log_probs(log_p, match.teacher_ids), False)
    return values


def hybrid_rows(
    student_logits: Tensor,
    teacher_logits: Tensor,
    match: VocabularyMatch,
    temperature: float = 1.0,
    matched_weight: float = 1.0,
    unmatched_weight: float = 1.0,
    kind: SoftDivergence = "kl",
    jsd_beta: float = 0.5,
    skew_alpha: float = 0.1,
    chunk_rows: int | None = None,
    top: int | None = None,
) -> Tensor:
    """``matched_weight · matched divergence + unmatched_weight · sorted L1 distance of the unmatched parts``.

    The first term is :func:`matched_divergence_rows`. The second is the ULD distance (as in
    :func:`uld_rows`, ``top`` included) between the student's probabilities on its unmatched tokens and
    the teacher's on its own, each taken from the full softmax (not renormalised, so a side whose
    unmatched mass is small contributes little) and sorted: it tells the student how the bucket's mass
    should be shaped, where the first term only gives its total. A weight of 0 skips its term. With
    every token matched the second term is 0; with none, the first is 0 and the second is
    :func:`uld_rows`.

    Args:
        student_logits: ``(N, Vs)``; the gradient flows into them only.
        teacher_logits: ``(N, Vt)``, detached here.
        match: matched ids (:class:`VocabularyMatch`).
        temperature: ``T`` of all softmaxes.
        matched_weight, unmatched_weight: the two terms' weights.
        kind, jsd_beta, skew_alpha: the matched term's divergence (:func:`matched_divergence_rows`).
        chunk_rows, top: the sorted term's chunking and truncation (:func:`uld_rows`).

    Returns:
        ``(N,)`` float32.
    """
    _check_rows(student_logits, teacher_logits, temperature)
    match.check_widths(student_logits.shape[-1], teacher_logits.shape[-1])
    match = match.to(student_logits.device)
    total = student_logits.new_zeros(student_logits.shape[0], dtype=torch.float32)
    if matched_weight:
        total = total + matched_weight * matched_divergence_rows(
            student_logits, teacher_logits, match, temperature, kind, jsd_beta, skew_alpha
        )
    if unmatched_weight:
        student_columns = _unmatched(match.student_ids, student_logits.shape[-1]).nonzero().squeeze(-1)
        teacher_columns = _unmatched(match.teacher_ids, teacher_logits.shape[-1]).nonzero().squeeze(-1)
        sorted_term = _sorted_distance(student_logits, teacher_logits, temperature, chunk_rows, top, student_columns, teacher_columns)
        total = total + unmatched_weight * sorted_term
    return total

"""Prediction-level (logit) losses with temperature: soft divergences (KL, cross-entropy, reverse KL,
Jensen–Shannon, skew KL, total variation, cross-entropy with the teacher's top class) and logit MSE.

All functions take student and teacher logits of shape ``(..., K)`` (``(B, C)`` for a task head,
``(B, N, V)`` for an LM head) and an optional mask over the leading dimensions, or compact token
rows ``(R, V)`` with their ``(B, N)`` ``positions`` (:mod:`lightning_kd.core.logit_rows`), which give
the same value as the whole logits with ``positions`` as the mask. Teacher
distributions are the first argument of (forward) KL, as in Hinton et al. (2015); :func:`soft_divergence`
lists the reverse, mixed and bounded alternatives. Math runs in float32 so a bf16/fp16 teacher never
degrades the loss.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_kd.losses.masking import Reduction, reduce_masked, reduce_masked_per_sample
from lightning_kd.losses.rows import reduce_rows
from lightning_kd.losses.topk_teacher import TopKTeacher, bucket_divergence

#: The soft divergences between ``p = softmax(z_t/T)`` (teacher) and ``q = softmax(z_s/T)`` (student);
#: see :func:`soft_divergence` for their formulas.
SoftDivergence = Literal["kl", "ce", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tvd", "argmax_ce"]
#: Per-row divergence of a chunk: ``(log q, log p, with_grad) → (values (R,), ∂L/∂(z_s/T) (R, V) or None)``.
#: It may overwrite inputs that autograd does not track (every caller hands it fresh tensors): a chunk is
#: ~V·rows floats, and each buffer it need not allocate is a pass over fresh memory saved.
RowDivergence = Callable[[Tensor, Tensor, bool], tuple[Tensor, Tensor | None]]


def _kept_rows(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """The rows a row mask keeps, so per-row math skips the rest.

    MLM distillation scores ~15 % of positions; softmaxes over the other 85 % of ``(B, N, V)``
    rows would be thrown away by the mask anyway (and a NaN there would survive ``0 × NaN``).
    Without a mask of the logits' leading shape, every row is kept as is.
    """
    if mask is None or mask.shape != student_logits.shape[:-1]:
        return student_logits, teacher_logits, None
    keep = mask.bool()
    return student_logits[keep], teacher_logits[keep], keep


def _spread(rows: Tensor, keep: Tensor | None) -> Tensor:
    """Per-row values of the kept rows back at their positions (0 elsewhere), for the reduction."""
    return rows if keep is None else rows.new_zeros(keep.shape).masked_scatter(keep, rows)


def _tracked(*tensors: Tensor) -> bool:
    """Whether autograd records operations on any of ``tensors`` (then they must not be overwritten)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _centred(q: Tensor, g: Tensor) -> Tensor:
    """``q ⊙ (g − Σ_k q_k g_k)``, in place in ``g``: the gradient wrt ``u = z_s/T`` of a row loss whose
    gradient wrt ``q = softmax(u)`` is ``g`` (the softmax Jacobian ``diag(q) − q qᵀ`` applied to ``g``).
    Constants added to ``g`` cancel, so the ``+1`` of ``∂(q log q)/∂q`` is left out everywhere."""
    return g.sub_((q * g).sum(-1, keepdim=True)).mul_(q)


def _log_mixture(log_p: Tensor, log_q: Tensor, weight: float) -> Tensor:
    """``log(w·p + (1−w)·q)`` by log-sum-exp (no underflow of ``p`` or ``q``), exactly ``log p`` at
    ``w = 1`` and ``log q`` at ``w = 0``, where one of the log-weights would be ``−∞``."""
    if weight >= 1.0:
        return log_p
    if weight <= 0.0:
        return log_q
    return torch.logaddexp(log_p + math.log(weight), log_q + math.log1p(-weight))


# Row divergences: ``(log q, log p, with_grad) → (L per row, ∂L/∂u per row or None)`` with ``u = z_s/T``,
# ``q = softmax(u)`` the student's and ``p`` the teacher's tempered distribution (the caller divides
# ``∂L/∂u`` by ``T``). The fused kernel asks for the gradient; the autograd path asks only for the
# values, whose torch ops then carry the graph. Buffers made here are reused in place for the gradient.


def _kl_rows(log_q: Tensor, log_p: Tensor, with_grad: bool) -> tuple[Tensor, Tensor | None]:
    """``KL(p ‖ q) = Σ p (log p − log q)``; ``∂L/∂q = −p/q`` so ``∂L/∂u = q − p``."""
    p = log_p.exp()
    if _tracked(log_p, log_q):
        values = (p * (log_p - log_q)).sum(-1)
    else:
        values = log_p.sub_(log_q).mul_(p).sum(-1)  # log p is not needed after this: no (R, V) temporaries
    return values, log_q.exp_().sub_(p) if with_grad else None


def _ce_rows(log_q: Tensor, log_p: Tensor, with_grad: bool) -> tuple[Tensor, Tensor | None]:
    """``−Σ p log q``: KL plus the teacher's entropy, so the same ``∂L/∂u = q − p``."""
    p = log_p.exp()
    values = -(p * log_q).sum(-1)
    return values, log_q.exp_().sub_(p) if with_grad else None


def _reverse_kl_rows(log_q: Tensor, log_p: Tensor, with_grad: bool) -> tuple[Tensor, Tensor | None]:
    """``KL(q ‖ p) = Σ q (log q − log p)``; ``∂L/∂q = d + 1`` with ``d = log q − log p``, and
    ``Σ q d = L``, so ``∂L/∂u = q ⊙ (d − L)``."""
    q = log_q.exp()
    d = log_q - log_p
    values = (q * d).sum(-1)
    return values, d.sub_(values.unsqueeze(-1)).mul_(q) if with_grad else None


def _jsd_rows(log_q: Tensor, log_p: Tensor, with_grad: bool, *, beta: float) -> tuple[Tensor, Tensor | None]:
    """``β KL(p ‖ m) + (1−β) KL(q ‖ m)`` with ``m = β p + (1−β) q`` and ``0 < β < 1``.

    ``∂m/∂q = 1−β``: ``∂L/∂q_k = −β(1−β) p_k/m_k + (1−β)(log q_k − log m_k + 1 − (1−β) q_k/m_k)``,
    and as ``β p_k + (1−β) q_k = m_k`` the two ratios sum to ``−(1−β)``, cancelling the ``+1``:
    ``∂L/∂q = (1−β) d`` with ``d = log q − log m``, so ``∂L/∂u = (1−β) q ⊙ (d − KL(q ‖ m))``.
    """
    log_m = _log_mixture(log_p, log_q, beta)
    q = log_q.exp()
    d = log_q - log_m
    student_kl = (q * d).sum(-1)
    values = beta * (log_p.exp() * (log_p - log_m)).sum(-1) + (1.0 - beta) * student_kl
    return values, d.sub_(student_kl.unsqueeze(-1)).mul_(q).mul_(1.0 - beta) if with_grad else None


def _skew_kl_rows(log_q: Tensor, log_p: Tensor, with_grad: bool, *, alpha: float) -> tuple[Tensor, Tensor | None]:
    """``KL(p ‖ m)`` with ``m = α p + (1−α) q``.

    ``∂L/∂q = −(1−α) r`` with ``r = p/m``, so ``∂L/∂u = (1−α) q ⊙ (Σ q r − r)``. It is centred as
    ``r − 1 = expm1(log p − log m)`` (the constant cancels): finite where ``p`` and ``m`` underflow
    together, and without the rounding of ``Σ q ≠ 1`` where ``r ≈ 1``.
    """
    log_m = _log_mixture(log_p, log_q, alpha)
    log_r = log_p - log_m
    values = (log_p.exp() * log_r).sum(-1)
    if not with_grad:
        return values, None
    return values, _centred(log_q.exp(), log_r.expm1_()).mul_(alpha - 1.0)


def _skew_reverse_kl_rows(log_q: Tensor, log_p: Tensor, with_grad: bool, *, alpha: float) -> tuple[Tensor, Tensor | None]:
    """``KL(q ‖ m)`` with ``m = (1−α) p + α q``.

    ``∂L/∂q_k = d_k + 1 − α q_k/m_k`` with ``d = log q − log m`` (``q/m = exp d``), so
    ``∂L/∂u = q ⊙ (g − Σ q g)`` with ``g = d − α (exp(d) − 1)`` (constants cancel; ``expm1`` makes the
    gradient exactly 0 at ``α = 1``, where ``m = q`` and ``d = 0``, instead of the rounding of ``Σ q ≠ 1``).
    """
    log_m = _log_mixture(log_p, log_q, 1.0 - alpha)
    q = log_q.exp()
    d = log_q - log_m
    values = (q * d).sum(-1)
    if not with_grad:
        return values, None
    return values, _centred(q, d.expm1().mul_(-alpha).add_(d))


def _tvd_rows(log_q: Tensor, log_p: Tensor, with_grad: bool) -> tuple[Tensor, Tensor | None]:
    """``½ Σ |p − q|``; ``∂L/∂q = ½ sign(q − p)`` (the subgradient 0 where they are equal, as autograd's)."""
    q = log_q.exp()
    diff = q - log_p.exp()
    values = 0.5 * diff.abs().sum(-1)
    return values, _centred(q, diff.sign_().mul_(0.5)) if with_grad else None


def _argmax_ce_rows(log_q: Tensor, log_p: Tensor, with_grad: bool) -> tuple[Tensor, Tensor | None]:
    """``−log q_y`` with ``y = argmax_k p_k``, the teacher's top class (the lowest index among ties) as a
    one-hot target; ``∂L/∂u = q − onehot(y)``. ``y`` does not depend on ``T`` (or on ``p``'s other values)."""
    top = log_p.argmax(-1, keepdim=True)
    values = -log_q.gather(-1, top).squeeze(-1)
    if not with_grad:
        return values, None
    grad = log_q.exp_()
    return values, grad.scatter_(-1, top, grad.gather(-1, top).sub_(1.0))


#: Read by :func:`~lightning_kd.losses.topk_teacher.bucket_divergence`: the top class is always among a top-k
#: teacher's kept ids, so its target is taken over those and never over the tail bucket (exact at every k).
_argmax_ce_rows.top_class_target = True  # type: ignore[attr-defined]

_FIXED_ROWS: dict[str, RowDivergence] = {
    "kl": _kl_rows, "ce": _ce_rows, "reverse_kl": _reverse_kl_rows, "tvd": _tvd_rows, "argmax_ce": _argmax_ce_rows,
}


def check_divergence_weights(jsd_beta: float, skew_alpha: float) -> None:
    """Refuse mixture weights out of range.

    Raises:
        ValueError: ``jsd_beta`` outside ``[0, 1]`` or ``skew_alpha`` outside ``(0, 1]``.
    """
    if not 0.0 <= jsd_beta <= 1.0:
        raise ValueError(f"jsd_beta must be in [0, 1] (0: forward KL, 1: reverse KL), got {jsd_beta}.")
    if not 0.0 < skew_alpha <= 1.0:
        raise ValueError(
            f"skew_alpha must be in (0, 1] (its mixture weight of the target distribution; 0 would be plain "
            f"'kl'/'reverse_kl'), got {skew_alpha}."
        )


def _row_divergence(kind: str, jsd_beta: float, skew_alpha: float) -> RowDivergence:
    """The row function of a divergence with its mixture weight bound.

    Raises:
        ValueError: an unknown ``kind`` or a weight out of range.
    """
    if kind not in get_args(SoftDivergence):
        raise ValueError(f"Unknown soft divergence {kind!r}; choose one of {', '.join(get_args(SoftDivergence))}.")
    check_divergence_weights(jsd_beta, skew_alpha)
    if kind == "jsd":
        # The mixture is q at β = 0 and p at β = 1, where the formula is 0; GKD's convention takes the
        # direction JSD approaches there instead: JSD_β/β → KL(p ‖ q) as β → 0, and
        # JSD_β/(1−β) → KL(q ‖ p) as β → 1.
        if jsd_beta == 0.0:
            return _kl_rows
        if jsd_beta == 1.0:
            return _reverse_kl_rows
        return partial(_jsd_rows, beta=jsd_beta)
    if kind == "skew_kl":
        return partial(_skew_kl_rows, alpha=skew_alpha)
    if kind == "skew_reverse_kl":
        return partial(_skew_reverse_kl_rows, alpha=skew_alpha)
    return _FIXED_ROWS[kind]


#: Public name of :func:`_row_divergence`, reused by the fused LM-head losses
#: (:mod:`lightning_kd.losses.fused_linear`); the private name stays for this module's callers.
row_divergence = _row_divergence


CHUNK_ELEMENTS = 1 << 20  # logits per chunk of the fused soft-target kernel (4 MB in float32)


class _SoftTargetRows(torch.autograd.Function):
    """A per-row divergence between ``softmax(s/T)`` and the frozen ``softmax(t/T)``, one cache-sized
    chunk of kept rows at a time, with the student's gradient (the row function's ``∂L/∂u``, over ``T``)
    written in the same pass.

    Autograd would run ~8 passes over the whole ``(rows, V)`` logits forward and ~6 backward, each
    leaving every cache (a ``32 × 128 × 30522`` MLM batch is 500 MB per tensor); here each chunk is
    read once while it is cache-resident, and backward is one scaling of the stored gradient.
    Measured on the 2-core CPU at 32 × 128 × 30522, forward + backward of KL: 3.5 s → 1.0 s.
    """

    @staticmethod
    def forward(
        ctx, student: Tensor, teacher: Tensor, keep: Tensor | None, temperature: float, divergence: RowDivergence
    ) -> Tensor:
        width = student.shape[-1]
        sparse = isinstance(teacher, TopKTeacher)  # top ids and a tail bucket, one per student row
        rows_s, rows_t = student.reshape(-1, width), teacher if sparse else teacher.reshape(-1, width)
        index = None if keep is None else keep.reshape(-1).nonzero().squeeze(1)
        count = rows_s.shape[0] if index is None else index.numel()
        values = rows_s.new_zeros(rows_s.shape[0], dtype=torch.float32)
        # The gradient of the kept rows only (dropped rows get exactly 0 in backward): for MLM KD that
        # is 15 % of the logits' size held between forward and backward, not all of it.
        grad = rows_s.new_empty(count, width) if ctx.needs_input_grad[0] else None
        step = max(1, CHUNK_ELEMENTS // width)
        with torch.autocast(device_type=student.device.type, enabled=False):
            for start in range(0, count, step):
                part = slice(start, min(start + step, count))
                rows = part if index is None else index[part]
                log_q = F.log_softmax(rows_s[rows].float() / temperature, dim=-1)  # a view, or a gather of the chunk's rows
                if sparse:
                    chunk_values, chunk_grad = bucket_divergence(divergence, log_q, rows_t.rows(rows), grad is not None)
                else:
                    log_p = F.log_softmax(rows_t[rows].float() / temperature, dim=-1)
                    chunk_values, chunk_grad = divergence(log_q, log_p, grad is not None)
                values[rows] = chunk_values
                if grad is not None:
                    grad[part] = chunk_grad.div_(temperature)  # ∂u/∂s = 1/T
        ctx.save_for_backward(grad, index)
        ctx.shape = student.shape
        return values.view(student.shape[:-1])

    @staticmethod
    def backward(ctx, grad_values: Tensor):
        grad, index = ctx.saved_tensors
        if grad is None:
            return None, None, None, None, None
        scale = grad_values.reshape(-1, 1).to(grad.dtype)
        if index is None:
            full = grad * scale
        else:
            full = grad.new_zeros(scale.shape[0], grad.shape[1]).index_copy_(0, index, grad * scale[index])
        return full.view(ctx.shape), None, None, None, None


def _soft_target_rows(
    student_logits: Tensor, teacher_logits: Tensor | TopKTeacher, temperature: float, mask: Tensor | None, divergence: RowDivergence
) -> Tensor:
    """Per-row soft-target loss over the leading dimensions, 0 at rows the mask drops."""
    if isinstance(teacher_logits, TopKTeacher):
        if teacher_logits.temperature != temperature or len(teacher_logits) != student_logits[..., 0].numel():
            raise ValueError(
                f"The top-k teacher holds {len(teacher_logits)} rows at temperature {teacher_logits.temperature}; the soft "
                f"term reads {student_logits[..., 0].numel()} rows at temperature {temperature}. A teacher cache keeps the "
                "tail mass at the temperature it was filled with: fill a new cache (another path) for this temperature."
            )
    if isinstance(teacher_logits, TopKTeacher) or not teacher_logits.requires_grad:  # a frozen teacher's outputs
        keep = mask.bool() if mask is not None and mask.shape == student_logits.shape[:-1] else None
        return _SoftTargetRows.apply(student_logits, teacher_logits, keep, temperature, divergence)
    # Targets with a graph (learned projections of teacher features): plain autograd on the kept rows.
    student_logits, teacher_logits, keep = _kept_rows(student_logits, teacher_logits, mask)
    log_q = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    rows, _ = divergence(log_q, log_p, False)
    return _spread(rows, keep)


def _reduce(rows: Tensor, mask: Tensor | None, reduction: Reduction, per_sample: bool, positions: Tensor | None = None) -> Tensor:
    if positions is not None:
        if mask is not None:
            raise ValueError("Compact rows carry their positions; give `positions` or `mask`, not both.")
        return reduce_rows(rows, positions, reduction, per_sample)
    if per_sample:
        return reduce_masked_per_sample(rows, mask, reduction)
    return reduce_masked(rows, mask, reduction)


def soft_divergence(
    student_logits: Tensor,
    teacher_logits: Tensor | TopKTeacher,
    kind: SoftDivergence,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    reduction: Reduction = "masked_mean",
    t2_scale: bool = True,
    per_sample: bool = False,
    positions: Tensor | None = None,
    *,
    jsd_beta: float = 0.5,
    skew_alpha: float = 0.1,
) -> Tensor:
    """A soft divergence between ``p = softmax(z_t/T)`` (teacher) and ``q = softmax(z_s/T)`` (student),
    summed over the classes of each row and averaged over the rows.

    Per row:

    * ``"kl"``: ``KL(p ‖ q) = Σ_k p_k (log p_k − log q_k)`` (Hinton et al., 2015).
    * ``"ce"``: ``−Σ_k p_k log q_k``, KL plus the teacher's entropy (same gradient).
    * ``"reverse_kl"``: ``KL(q ‖ p) = Σ_k q_k (log q_k − log p_k)`` (mode-seeking).
    * ``"jsd"``: ``β KL(p ‖ m) + (1−β) KL(q ‖ m)`` with ``m = β p + (1−β) q`` and ``β = jsd_beta``
      (GKD, Agarwal et al., 2024); ``β = 0.5`` is the symmetric Jensen–Shannon divergence. At the ends,
      where this formula is 0, ``β = 0`` is ``KL(p ‖ q)`` and ``β = 1`` is ``KL(q ‖ p)`` (the limits of
      ``JSD_β/β`` and ``JSD_β/(1−β)``), so the value jumps there from the nearly-0 interior.
    * ``"skew_kl"``: ``KL(p ‖ α p + (1−α) q)`` with ``α = skew_alpha`` (DistiLLM, Ko et al., 2024);
      ``α = 1`` gives 0.
    * ``"skew_reverse_kl"``: ``KL(q ‖ (1−α) p + α q)``.
    * ``"tvd"``: the total variation distance ``½ Σ_k |p_k − q_k|``, in ``[0, 1]``.
    * ``"argmax_ce"``: ``−log q_y`` with ``y = argmax_k p_k``: the cross-entropy with the teacher's top
      class as a hard label (hard-label distillation, Touvron et al., 2021; the teacher's pseudo-label
      on unlabelled text). ``T`` leaves ``y`` unchanged and tempers the student only; use ``T = 1``.

    Frozen teacher logits run a chunked kernel that writes the student's analytic gradient in the
    forward pass; teacher logits that require grad run plain autograd (the same value). A
    :class:`~lightning_kd.losses.topk_teacher.TopKTeacher` (a top-k teacher cache's rows) is compared
    over its ``k + 1`` buckets (top ids and the tail; see that module).

    Args:
        student_logits: ``(..., K)`` logits, or compact ``(R, V)`` rows with ``positions``.
        teacher_logits: logits of the same shape, or a top-k teacher with one row per student row at ``temperature``.
        kind: the divergence (above).
        temperature: ``T`` of both softmaxes.
        mask: the rows to average over (a mask of the leading shape also skips the others' math).
        reduction: ``"masked_mean"`` or ``"gkd"`` (:mod:`lightning_kd.losses.masking`).
        t2_scale: multiply a KL-family divergence (all but ``"tvd"``) by ``T²``, which keeps its
            gradient's magnitude independent of ``T``. Total variation is never scaled: its gradient
            shrinks as ``1/T``, not ``1/T²``, so ``T²`` would make it grow with ``T``.
        per_sample: return one value per example ``(B,)`` instead of a scalar.
        positions: the ``(B, N)`` places of compact ``(R, V)`` logits (then ``mask`` is ``None``).
        jsd_beta: ``β`` of ``"jsd"``, in ``[0, 1]``.
        skew_alpha: ``α`` of ``"skew_kl"`` and ``"skew_reverse_kl"``, in ``(0, 1]``.

    Raises:
        ValueError: an unknown ``kind``, a weight out of range, or both ``mask`` and ``positions``.
    """
    divergence = _row_divergence(kind, jsd_beta, skew_alpha)
    rows = _soft_target_rows(student_logits, teacher_logits, temperature, mask, divergence)
    loss = _reduce(rows, mask, reduction, per_sample, positions)
    return loss * temperature**2 if t2_scale and kind != "tvd" else loss


def soft_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    reduction: Reduction = "masked_mean",
    t2_scale: bool = True,
    per_sample: bool = False,
    positions: Tensor | None = None,
) -> Tensor:
    """``T² · mean_rows KL(softmax(z_t/T) ‖ softmax(z_s/T))``.

    The ``T²`` factor (``t2_scale``) keeps the soft gradient's magnitude independent of ``T``.
    ``positions``: the ``(B, N)`` places of compact ``(R, V)`` logits (then ``mask`` is ``None``).
    """
    return soft_divergence(student_logits, teacher_logits, "kl", temperature, mask, reduction, t2_scale, per_sample, positions)


def soft_cross_entropy(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    reduction: Reduction = "masked_mean",
    t2_scale: bool = False,
    per_sample: bool = False,
    positions: Tensor | None = None,
) -> Tensor:
    """``mean_rows −Σ_k softmax(z_t/T)_k · log softmax(z_s/T)_k`` (summed over classes, not averaged).

    Differs from :func:`soft_kl` by the teacher's entropy, a constant without gradient. The GKD
    reference's fine-tuning default is this loss without ``T²``. ``positions`` as for :func:`soft_kl`.
    """
    return soft_divergence(student_logits, teacher_logits, "ce", temperature, mask, reduction, t2_scale, per_sample, positions)


def logits_mse(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor | None = None,
    reduction: Reduction = "masked_mean",
    teacher_scale: float = 1.0,
    per_sample: bool = False,
    positions: Tensor | None = None,
) -> Tensor:
    """Mean squared error between raw logits (no temperature), averaged over the class dimension too.

    ``teacher_scale`` multiplies the teacher's logits (the reference's ``mse_t_w``). ``positions`` as
    for :func:`soft_kl`.
    """
    student_logits, teacher_logits, keep = _kept_rows(student_logits, teacher_logits, mask)
    rows = (student_logits.float() - teacher_scale * teacher_logits.float()).pow(2).mean(dim=-1)
    return _reduce(_spread(rows, keep), mask, reduction, per_sample, positions)

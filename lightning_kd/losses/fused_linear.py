"""Token-level logit losses computed from the hidden rows that enter an LM head, without the logits.

A distillation step on a large vocabulary (49k–262k tokens) would otherwise hold the student's and the
teacher's ``(rows, V)`` float32 logits, their log-softmaxes and the logits' gradient: at 2048 rows
and ``V = 262144`` each of those is 2 GiB. Here the LM head is a :class:`LinearHead` (weight, bias and
the family's post-head transform) and :func:`fused_linear_terms` projects one chunk of rows at a
time, computes the soft divergence and the hard cross-entropy of the chunk with their gradients wrt
the logits, and pushes those straight through the head: ``∂L/∂rows[chunk] = G @ W``,
``∂L/∂W += Gᵀ @ rows[chunk]``, ``∂L/∂b += Σ_rows G``. Only one chunk's logits (and a few temporaries
of that size) are ever alive.

Why this shape of API:

* **Rows and a head, not a model.** The rows are whatever enters ``model.get_output_embeddings()``
  (after the final norm), so any caller that can hook the head — or slice positions before it — can
  use it; :meth:`LinearHead.of` reads the head and its post-transform from a verified Hugging Face
  family and refuses the rest, as silently dropping a soft-cap would change the loss.
* **Per-row weights instead of reductions.** ``SoftSpec.weights`` and ``HardSpec.weights`` are the
  ``(R,)`` coefficients of each row's value, with the reduction (masked mean, GKD's per-position
  mean, per-sequence means) and ``T²`` folded in by the caller (:meth:`SoftSpec.masked_mean` and
  :meth:`HardSpec.mean` build the usual ones). Each chunk then needs nothing global, and a weight of 0
  in both terms skips the row entirely: prompt and padding positions are never projected.
* **One autograd Function, two outputs.** ``{"soft": Σ_r w_r D(p_r ‖ q_r), "hard": Σ_r v_r CE(z_r, y_r)}``
  are separate scalars so a caller may weight, log or drop them independently; the Function keeps one
  set of gradient accumulators per term and combines them with each output's upstream gradient in
  backward (``g_soft·G_soft + g_hard·G_hard``). The price, when both terms are on, is a second
  ``(V, d)`` float32 accumulator and two more ``(chunk, V) × (V, d)`` products per chunk than a single
  combined loss would need.
* **Eager forward-time gradients.** Gradients are computed in the forward pass (nothing of size
  ``V`` is kept besides the ``(V, d)`` accumulators), so backward is a few scalings; this also means the
  forward pays for the gradient even when autograd is on but backward never runs — call it under
  ``torch.no_grad()`` for evaluation (then no gradient is computed at all). A backward that is the
  graph's last (no ``retain_graph``) scales the accumulators in place and hands them to autograd, which
  adopts the weight's as ``.grad`` without a copy; with ``retain_graph=True`` they are combined out of
  place, so the terms can be differentiated again (e.g. one ``autograd.grad`` per term).

Memory, float32 and one call: the ``(V, d)`` weight-gradient accumulators (one per term) and
``(R, d)`` rows-gradient accumulators from forward to backward, a float32 copy of a lower-precision
weight, and ~6 buffers of ``chunk_rows × V`` during the forward (:func:`default_chunk_rows`). The unfused
path holds several ``(R, V)`` tensors plus the weight's gradient; the fused path wins once ``R·V``
dominates ``V·d`` (a few hundred rows and up at these widths; see ``benchmarks/fused_head.py``).

Arithmetic runs in float32 (float64 for float64 inputs) whatever the input dtypes — bf16 rows and
weights are up-cast once (a float32 copy of a bf16 ``(V, d)`` weight is made per call) — and gradients
return in the inputs' dtypes. The teacher is computed without a graph and never gets a gradient.

The gradient wrt the logits ``z`` of a chunk, per row ``r`` (``u = z/T``, ``q = softmax(u)``):
soft ``G_soft = w_r · (∂D/∂u)/T`` (``∂D/∂u`` from the divergence's row function of
:mod:`lightning_kd.losses.logits`), hard ``G_hard = v_r · (softmax(z_r) − onehot(y_r))``. Then the
post-head transform and its derivative (``a = x Wᵀ + b`` the raw head output):

* scale: ``s = σ·a``, so ``∂s/∂a = σ`` (Cohere's ``logit_scale``, Granite's ``1/logits_scaling``);
* soft-cap (Gemma 2/3, after the scale): ``z = c·tanh(s/c)``, ``∂z/∂s = 1 − tanh²(s/c) = 1 − y²``
  with ``y = tanh(s/c)`` kept from the forward (not ``z/c``, whose rounding would be amplified by
  the cancellation of ``1 − y²`` near saturation);
* so ``∂L/∂a = ∂L/∂z ⊙ σ (1 − y²)`` (``σ`` alone without a cap), and through the linear map
  ``∂L/∂x = (∂L/∂a) W``, ``∂L/∂W = (∂L/∂a)ᵀ x``, ``∂L/∂b = Σ_rows ∂L/∂a``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_kd.losses.logits import RowDivergence, SoftDivergence, row_divergence
from lightning_kd.losses.topk_teacher import TopKTeacher, bucket_divergence

IGNORE_INDEX = -100

#: Logits a chunk aims at (4 Mi elements: 16 MiB in float32; a chunk holds ~6 such buffers at once, so this
#: sets the fused path's transient memory: halving it from 8 Mi lowered the MLM DistilBERT step's peak from
#: 1,810 to 1,630 MB on a 2-core CPU, at V = 30,522, with 137 rows a chunk instead of 274).
CHUNK_ELEMENTS = 1 << 22
#: Rows a chunk keeps where :data:`CHUNK_ELEMENTS` would give fewer, as long as the chunk stays within
#: :data:`MAX_CHUNK_ELEMENTS`. Each chunk streams the whole ``(V, d)`` weight three times (projection, rows'
#: gradient, the weight-gradient accumulator), so thin chunks are bandwidth-bound: measured on the same CPU
#: at V = 262144, d = 640 (one thread), 16 rows a chunk ran at 35 GFLOP/s, 32 at 48, 64 at 55, 128+ at 61; at
#: V = 151,936 a KD step with 32-row chunks took 0.91 × the naive step's time against 0.82 × with 55.
MIN_CHUNK_ROWS = 64
#: The most logits a default chunk holds (8 Mi: 32 MiB of float32): 55 rows at V = 151,936 (Qwen2.5), 32 at
#: 262,144 (Gemma 3); larger vocabularies get fewer rows.
MAX_CHUNK_ELEMENTS = 1 << 23


def default_chunk_rows(vocab_size: int) -> int:
    """Rows per chunk when ``chunk_rows`` is not given: :data:`CHUNK_ELEMENTS` logits, or up to
    :data:`MIN_CHUNK_ROWS` rows while they fit in :data:`MAX_CHUNK_ELEMENTS`; at least one row.

    137 rows at V = 30,522 (BERT), 85 at 49,152 (SmolLM2), 55 at 151,936 (Qwen2.5), 32 at 262,144 (Gemma 3)."""
    return max(1, CHUNK_ELEMENTS // vocab_size, min(MIN_CHUNK_ROWS, MAX_CHUNK_ELEMENTS // vocab_size))


# ----------------------------------------------------------------------------------------------------
# The head


def _plain(config: Any) -> tuple[float, float | None]:
    return 1.0, None


def _softcapped(config: Any) -> tuple[float, float | None]:
    return 1.0, getattr(config, "final_logit_softcapping", None)


def _cohere(config: Any) -> tuple[float, float | None]:
    return float(config.logit_scale), None


def _granite(config: Any) -> tuple[float, float | None]:
    return 1.0 / float(config.logits_scaling), None


#: Verified families (``type(model).__name__``) → ``config → (scale, softcap)`` of what their forward
#: does after ``lm_head`` in transformers 5.x (multimodal wrappers such as ``Gemma3ForConditionalGeneration``
#: are not listed, so refused). Each is checked against the model's own logits on a
#: tiny random config in ``tests/losses/test_fused_linear.py``; add a family only with such a test.
#:
#: ================================================  =================================================
#: Llama, Mistral, Qwen2, Qwen3, Gemma, GPT-2         ``logits = lm_head(h)``
#: Gemma2, Gemma3 (text-only ``Gemma3ForCausalLM``)  ``c·tanh(lm_head(h)/c)``, ``c = final_logit_softcapping`` (None: none)
#: Cohere                                            ``lm_head(h) · logit_scale``
#: Granite                                           ``lm_head(h) / logits_scaling``
#: BERT, RoBERTa, XLM-R, DistilBERT, ALBERT,         ``decoder(transform(h))``: the head's input rows are
#: ELECTRA, MPNet, ModernBERT (``…ForMaskedLM``)     the MLM transform's output
#: ================================================  =================================================
POST_HEAD: dict[str, Callable[[Any], tuple[float, float | None]]] = {
    "LlamaForCausalLM": _plain,
    "MistralForCausalLM": _plain,
    "Qwen2ForCausalLM": _plain,
    "Qwen3ForCausalLM": _plain,
    "GemmaForCausalLM": _plain,
    "GPT2LMHeadModel": _plain,
    "Gemma2ForCausalLM": _softcapped,
    "Gemma3ForCausalLM": _softcapped,
    "CohereForCausalLM": _cohere,
    "GraniteForCausalLM": _granite,
    **{f"{name}ForMaskedLM": _plain for name in ("Bert", "Roberta", "XLMRoberta", "DistilBert", "Albert", "Electra", "MPNet", "ModernBert")},
}


@dataclass(frozen=True, eq=False)
class LinearHead:
    """An LM head as a function of the rows entering it: ``post(rows @ Wᵀ + b)``.

    Attributes:
        weight: ``(V, d)``; for a model, the head's own Parameter (a tied weight is the input
            embedding's, so its gradient also reaches the embedding).
        bias: ``(V,)`` or ``None``.
        scale: multiplies the logits (Cohere's ``logit_scale``, Granite's ``1/logits_scaling``).
        softcap: ``c`` of ``c·tanh(s/c)``, applied after the scale (Gemma 2/3's ``final_logit_softcapping``).
    """

    weight: Tensor
    bias: Tensor | None = None
    scale: float = 1.0
    softcap: float | None = None

    def __post_init__(self) -> None:
        if self.weight.dim() != 2:
            raise ValueError(f"LinearHead.weight must be (V, d), got shape {tuple(self.weight.shape)}.")
        if self.bias is not None and self.bias.shape != self.weight.shape[:1]:
            raise ValueError(f"LinearHead.bias must be ({self.weight.shape[0]},), got shape {tuple(self.bias.shape)}.")
        if self.softcap is not None and not self.softcap > 0:
            raise ValueError(f"LinearHead.softcap must be positive (or None), got {self.softcap}.")

    @property
    def vocab_size(self) -> int:
        return self.weight.shape[0]

    @property
    def width(self) -> int:
        return self.weight.shape[1]

    def project(self, rows: Tensor) -> Tensor:
        """The logits ``(..., V)`` of rows ``(..., d)``, with autograd, in the rows' dtype: the same
        operations as the model's forward after its last hidden state."""
        logits = F.linear(rows, self.weight, self.bias)
        if self.scale != 1.0:
            logits = logits * self.scale
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    @classmethod
    def of(cls, model: torch.nn.Module) -> LinearHead:
        """The vocabulary projection of a Hugging Face causal or masked LM: ``get_output_embeddings()``'s
        weight and bias (the same Parameter objects) and the post-head transform of its family (:data:`POST_HEAD`).

        Raises:
            ValueError: a family whose forward after the head was not verified, or a head that is not a
                linear layer.
        """
        family = type(model).__name__
        post = POST_HEAD.get(family)
        if post is None:
            raise ValueError(
                f"LinearHead.of: {family} is not a verified family; its forward may transform the logits after "
                f"the LM head in a way the fused losses would silently drop. Verified: {', '.join(sorted(POST_HEAD))}. "
                f"Build LinearHead(weight, bias, scale, softcap) yourself after checking the model's forward."
            )
        head = model.get_output_embeddings()
        weight = getattr(head, "weight", None)
        if not isinstance(weight, Tensor) or weight.dim() != 2:
            raise ValueError(f"LinearHead.of: {family}'s output embeddings {type(head).__name__} are not a linear layer.")
        scale, softcap = post(model.config)
        return cls(weight=weight, bias=getattr(head, "bias", None), scale=scale, softcap=softcap)


# ----------------------------------------------------------------------------------------------------
# The terms


@dataclass(frozen=True, eq=False)
class SoftSpec:
    """The soft term ``Σ_r weights[r] · D(softmax(t_r/T) ‖ softmax(z_r/T))``.

    Attributes:
        weights: ``(R,)`` (or the rows' leading shape) per-row coefficients, reduction and ``T²``
            folded in; constants (they must not require grad). Rows with 0 are skipped.
        kind: a divergence of :func:`lightning_kd.losses.logits.soft_divergence`.
        temperature: ``T`` of both softmaxes.
        jsd_beta: ``β`` of ``"jsd"``.
        skew_alpha: ``α`` of ``"skew_kl"`` and ``"skew_reverse_kl"``.
    """

    weights: Tensor
    kind: SoftDivergence = "kl"
    temperature: float = 1.0
    jsd_beta: float = 0.5
    skew_alpha: float = 0.1

    @classmethod
    def masked_mean(cls, mask: Tensor, kind: SoftDivergence = "kl", temperature: float = 1.0, t2_scale: bool = True,
                    **mixture: float) -> SoftSpec:
        """The mean over the rows ``mask`` keeps (0 for an empty mask), times ``T²`` with ``t2_scale``
        except for ``"tvd"`` — what :func:`~lightning_kd.losses.logits.soft_divergence` computes.
        ``mixture``: ``jsd_beta`` and/or ``skew_alpha``."""
        keep = mask.float()
        factor = temperature**2 if t2_scale and kind != "tvd" else 1.0
        return cls(keep * (factor / keep.sum().clamp_min(1.0)), kind, temperature, **mixture)


@dataclass(frozen=True, eq=False)
class HardSpec:
    """The hard term ``Σ_r weights[r] · CE(z_r, labels[r])`` over the rows whose label is not ``ignore_index``.

    Attributes:
        labels: ``(R,)`` (or the rows' leading shape) token ids, ``ignore_index`` where not scored.
        weights: per-row coefficients of the same shape, the mean folded in; constants.
        ignore_index: the label of rows without a target.
    """

    labels: Tensor
    weights: Tensor
    ignore_index: int = IGNORE_INDEX

    @classmethod
    def mean(cls, labels: Tensor, ignore_index: int = IGNORE_INDEX) -> HardSpec:
        """The mean over the scored rows: ``F.cross_entropy(logits, labels)`` (0 when none is scored)."""
        keep = (labels != ignore_index).float()
        return cls(labels, keep / keep.sum().clamp_min(1.0), ignore_index)


@dataclass(eq=False)
class _Plan:
    """Everything of the Function's forward that autograd must not see."""

    student: LinearHead
    teacher_rows: Tensor | None
    teacher: LinearHead | None
    soft: SoftSpec | None
    divergence: RowDivergence | None
    soft_weights: Tensor | None  # (R,) in the compute dtype
    labels: Tensor | None  # (R,) long, ignore_index → weight 0
    hard_weights: Tensor | None
    index: Tensor  # the active rows (a weight ≠ 0 in some term)
    chunk_rows: int
    dtype: torch.dtype
    track: bool  # gradients wanted (grad mode on and some input requires grad)
    hard_ratio: float | None = None  # combined: the hard output's upstream gradient / the soft output's
    teacher_topk: TopKTeacher | None = None  # the teacher as top ids and a tail bucket instead of rows and a head


def _project(rows: Tensor, weight: Tensor, bias: Tensor | None, head: LinearHead) -> tuple[Tensor, Tensor | None]:
    """Logits of a chunk (in ``weight``'s dtype) and, for a soft-capped head, ``tanh(s/c)`` (else None)."""
    logits = rows @ weight.T if bias is None else torch.addmm(bias, rows, weight.T)
    if head.scale != 1.0:
        logits.mul_(head.scale)
    if head.softcap is None:
        return logits, None
    capped = logits.div_(head.softcap).tanh_()
    return capped * head.softcap, capped


def _select(tensor: Tensor, local: Tensor | None) -> Tensor:
    return tensor if local is None else tensor[local]


def _weighted_rows(coef: Tensor) -> Tensor | None:
    """The chunk-local indices of the rows with a non-zero weight; None when all have one (no gather)."""
    nonzero = coef != 0
    return None if bool(nonzero.all()) else nonzero.nonzero().squeeze(1)


def _soft_rows(plan: _Plan, z: Tensor, rows: Tensor, teacher: tuple[Tensor, Tensor | None]) -> tuple[Tensor, Tensor | None]:
    """Per-row divergence of student logits ``z`` from the teacher's at ``rows``, and ``∂D/∂u`` with ``u = z/T``
    (the caller divides by ``T`` along with the rows' weights: one pass over the chunk fewer)."""
    temperature = plan.soft.temperature
    if plan.teacher_topk is not None:
        log_q = F.log_softmax(z / temperature if temperature != 1.0 else z, dim=-1)
        return bucket_divergence(plan.divergence, log_q, plan.teacher_topk.rows(rows), plan.track)
    t, _ = _project(plan.teacher_rows[rows].to(z.dtype), *teacher, plan.teacher)
    log_q = F.log_softmax(z / temperature if temperature != 1.0 else z, dim=-1)
    log_p = F.log_softmax(t.div_(temperature) if temperature != 1.0 else t, dim=-1)
    del t
    return plan.divergence(log_q, log_p, plan.track)  # grad wrt u = z/T (may reuse log_q)


def _hard_rows(plan: _Plan, z: Tensor, rows: Tensor) -> tuple[Tensor, Tensor | None]:
    """Per-row cross-entropy of logits ``z`` with the labels at ``rows``, and ``softmax(z) − onehot(y)``."""
    target = plan.labels[rows].unsqueeze(1)
    log_q = F.log_softmax(z, dim=-1)
    values = -log_q.gather(1, target).squeeze(1)
    if not plan.track:
        return values, None
    grad = log_q.exp_()
    return values, grad.scatter_add_(1, target, grad.new_full(target.shape, -1.0))


class _FusedLinearTerms(torch.autograd.Function):
    """``(soft, hard)`` scalars of rows through a linear head; the gradients of both are accumulated in
    forward, one set each, and scaled by their upstream gradients in backward."""

    @staticmethod
    def forward(ctx, rows: Tensor, weight: Tensor, bias: Tensor | None, plan: _Plan) -> tuple[Tensor, Tensor]:
        dtype, head = plan.dtype, plan.student
        w = weight.to(dtype)
        b = None if bias is None else bias.to(dtype)
        want = [plan.track and needed for needed in ctx.needs_input_grad[:3]]
        weights = {"soft": plan.soft_weights, "hard": plan.hard_weights}
        terms = [term for term in ("soft", "hard") if weights[term] is not None]
        combined = plan.hard_ratio is not None and len(terms) == 2
        # One set of accumulators per term — the gradients of (rows, weight, bias), float32/64 — or one set
        # for both when the caller declared the ratio of their upstream gradients (two products a chunk fewer).
        sets = ["both"] if combined else terms
        acc = {
            name: [
                rows.new_zeros(rows.shape, dtype=dtype) if want[0] else None,
                w.new_zeros(w.shape) if want[1] else None,
                w.new_zeros(w.shape[0]) if want[2] and b is not None else None,
            ]
            for name in sets
        }
        totals = {term: rows.new_zeros((), dtype=dtype) for term in ("soft", "hard")}
        teacher = None
        if plan.teacher is not None:  # float32 once per call, not per chunk
            teacher_bias = plan.teacher.bias
            teacher = (plan.teacher.weight.detach().to(dtype), None if teacher_bias is None else teacher_bias.detach().to(dtype))
        index = plan.index
        with torch.autocast(device_type=rows.device.type, enabled=False):
            for start in range(0, index.numel(), plan.chunk_rows):
                idx = index[start : start + plan.chunk_rows]
                x = rows[idx].to(dtype)
                z, capped = _project(x, w, b, head)
                # ∂z/∂a per logit, σ(1 − y²), in place of y = tanh(s/c); None: the constant σ.
                deriv = None if capped is None else capped.square_().neg_().add_(1.0).mul_(head.scale)
                total = None  # combined: ∂(soft + ratio·hard)/∂z of the chunk
                for term in terms:
                    coef = weights[term][idx]
                    local = _weighted_rows(coef)  # a row may carry one term only
                    if local is not None and local.numel() == 0:
                        continue
                    coef, at = _select(coef, local), _select(idx, local)
                    if term == "soft":
                        values, grad = _soft_rows(plan, _select(z, local), at, teacher)
                    else:
                        values, grad = _hard_rows(plan, _select(z, local), at)
                    totals[term] += (coef * values).sum()
                    if grad is None:
                        continue
                    # ∂D/∂z = ∂D/∂u / T for the soft term; the hard one is scaled by its share of the upstream gradient.
                    factor = 1.0 / plan.soft.temperature if term == "soft" else plan.hard_ratio if combined else 1.0
                    grad.mul_(coef.unsqueeze(1) * factor if factor != 1.0 else coef.unsqueeze(1))
                    if combined:
                        total = _add_rows(total, grad, local, z)
                        continue
                    _push(grad, local, at, x, w, deriv, head, acc[term])
                    del grad
                if total is not None:
                    _push(total, None, idx, x, w, deriv, head, acc["both"])
                    del total
        # On ctx rather than save_for_backward: a backward that is the graph's last can then drop ctx's
        # reference and hand an accumulator itself to autograd, which adopts it as ``.grad`` (no copy).
        ctx.accumulators = [acc[name] for name in sets]
        ctx.terms = sets
        ctx.hard_ratio = plan.hard_ratio
        ctx.dtypes = (rows.dtype, weight.dtype, None if bias is None else bias.dtype)
        return totals["soft"], totals["hard"]

    @staticmethod
    def backward(ctx, grad_soft: Tensor, grad_hard: Tensor):
        accumulators = ctx.accumulators
        if accumulators is None:
            raise RuntimeError(
                "Trying to backward through fused_linear_terms a second time: pass retain_graph=True to the first "
                "backward (or autograd.grad) to differentiate its terms more than once."
            )
        # The last use of this graph (retain_graph=False, as AOT autograd checks): scale the accumulators in
        # place, so the largest, (V, d), needs no second buffer; with retain_graph they stay untouched.
        last_use = not _keep_graph()
        if last_use:
            ctx.accumulators = None
        upstream = {"soft": grad_soft, "hard": grad_hard, "both": grad_soft}
        if ctx.terms == ["both"] and not torch.allclose(grad_hard, grad_soft * ctx.hard_ratio, rtol=1e-5, atol=1e-12):
            raise RuntimeError(
                f"fused_linear_terms combined the terms' gradients for a hard/soft upstream ratio of {ctx.hard_ratio}, "
                f"but backward brought {float(grad_hard)} / {float(grad_soft)}: call it without hard_ratio when the "
                "terms are weighted independently."
            )
        out: list[Tensor | None] = [None, None, None]
        for term, sets in zip(ctx.terms, accumulators):
            for slot, accumulated in enumerate(sets):
                if accumulated is None:
                    continue
                scale = upstream[term].to(accumulated.dtype)
                if out[slot] is not None:
                    out[slot].addcmul_(accumulated, scale)
                else:
                    out[slot] = accumulated.mul_(scale) if last_use else accumulated * scale
        del accumulators
        grads = [None if g is None else g.to(dtype) for g, dtype in zip(out, ctx.dtypes)]
        del out
        return grads[0], grads[1], grads[2], None


def _add_rows(total: Tensor | None, grad: Tensor, local: Tensor | None, z: Tensor) -> Tensor:
    """``total`` (the chunk's combined ``∂L/∂z`` so far, or None) plus ``grad`` at its rows ``local`` (None: every row).

    A first gradient of every row becomes the total itself (no zeroed buffer, no extra pass); rows of a
    subset are added by gather, add, scatter of those rows alone — ``index_add_`` on CPU scatters through a
    chunk-sized index, ~20 × slower here."""
    if local is None:
        return grad if total is None else total.add_(grad)
    if total is None:
        total = torch.zeros_like(z)
    return total.index_copy_(0, local, total.index_select(0, local).add_(grad))  # local: distinct rows


def _push(grad: Tensor, local: Tensor | None, at: Tensor, x: Tensor, w: Tensor, deriv: Tensor | None,
          head: LinearHead, accumulators: list[Tensor | None]) -> None:
    """Send a chunk's ``∂L/∂z`` (rows ``local`` of the chunk, at global rows ``at``) back through the
    post-transform and the linear map into the accumulators of (rows, weight, bias)."""
    if deriv is not None:  # back through the post-transform: ∂L/∂a = ∂L/∂z ⊙ ∂z/∂a
        grad.mul_(_select(deriv, local))
    elif head.scale != 1.0:
        grad.mul_(head.scale)
    grad_rows, grad_weight, grad_bias = accumulators
    if grad_rows is not None:  # ∂L/∂x = G W (each row lies in one chunk)
        grad_rows.index_copy_(0, at, grad @ w)
    if grad_weight is not None:  # ∂L/∂W += Gᵀ x
        grad_weight.addmm_(grad.T, _select(x, local))
    if grad_bias is not None:  # ∂L/∂b += Σ_rows G
        grad_bias += grad.sum(0)


def _keep_graph() -> bool:
    """Whether the running backward keeps the graph (``retain_graph``); True when torch cannot tell."""
    probe = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    return True if probe is None else bool(probe())


def _flat(tensor: Tensor | None, rows: int, name: str) -> Tensor | None:
    if tensor is None:
        return None
    if tensor.numel() != rows:
        raise ValueError(f"{name} must have one entry per row ({rows}), got shape {tuple(tensor.shape)}.")
    if tensor.requires_grad:
        raise ValueError(f"{name} are constants of the loss; pass them detached (they must not require grad).")
    return tensor.reshape(rows)


def fused_linear_terms(
    student_rows: Tensor,
    student_head: LinearHead,
    teacher_rows: Tensor | None = None,
    teacher_head: LinearHead | None = None,
    *,
    soft: SoftSpec | None = None,
    hard: HardSpec | None = None,
    chunk_rows: int | None = None,
    hard_ratio: float | None = None,
    teacher_topk: TopKTeacher | None = None,
) -> dict[str, Tensor]:
    """The soft and hard terms of rows through their heads, without materialising the logits.

    Args:
        student_rows: ``(..., d_s)`` hidden rows entering the student's head (with their graph).
        student_head: the student's :class:`LinearHead` ``(V, d_s)``.
        teacher_rows: ``(..., d_t)`` the teacher's rows at the same positions (needed with ``soft``);
            any width and dtype, never differentiated.
        teacher_head: the teacher's :class:`LinearHead` ``(V, d_t)`` (same ``V``).
        soft: the soft divergence term, or ``None``.
        hard: the cross-entropy term on the labels, or ``None``.
        chunk_rows: rows projected at a time (default :func:`default_chunk_rows`).
        hard_ratio: with both terms, promise that backward brings the hard output ``hard_ratio`` times
            the soft output's upstream gradient (1 when the loss is their plain sum; ``hard_weight`` when
            the caller multiplies the hard output by it): the two terms' gradients then share one set of
            accumulators (per chunk two matrix products and one ``(V, d)`` buffer fewer). Backward
            checks the promise and raises if it is broken.
        teacher_topk: instead of ``teacher_rows`` and ``teacher_head``, the teacher's top ids and tail bucket
            per row at the soft term's temperature (a top-k teacher cache; the divergence runs over the
            ``k + 1`` buckets, :mod:`lightning_kd.losses.topk_teacher`).

    Returns:
        ``{"soft": Σ_r w_r D(p_r ‖ q_r), "hard": Σ_r v_r CE(z_r, y_r)}`` — a key per given spec — float32
        scalars (float64 for float64 inputs) whose gradients reach ``student_rows`` and the student
        head's weight and bias.

    Raises:
        ValueError: no term, mismatched shapes, a soft term without a teacher, labels out of range, or
            weights that require grad.
    """
    if soft is None and hard is None:
        raise ValueError("fused_linear_terms needs a soft or a hard term (or both).")
    width = student_head.width
    if student_rows.shape[-1] != width:
        raise ValueError(f"Student rows of width {student_rows.shape[-1]} do not fit a head of width {width}.")
    rows = student_rows.reshape(-1, width)
    count, vocab = rows.shape[0], student_head.vocab_size
    dtype = torch.float64 if torch.float64 in (rows.dtype, student_head.weight.dtype) else torch.float32
    active = torch.zeros(count, dtype=torch.bool, device=rows.device)
    soft_weights = divergence = teacher_flat = None
    if soft is not None and teacher_topk is not None:
        if teacher_rows is not None or teacher_head is not None:
            raise ValueError("Give the teacher as teacher_rows and teacher_head, or as teacher_topk, not both.")
        if teacher_topk.vocab_size != vocab or len(teacher_topk) != count or teacher_topk.temperature != soft.temperature:
            raise ValueError(
                f"The top-k teacher ({len(teacher_topk)} rows, V {teacher_topk.vocab_size}, T {teacher_topk.temperature}) "
                f"does not pair with {count} student rows of V {vocab} at T {soft.temperature}."
            )
    elif soft is not None:
        if teacher_rows is None or teacher_head is None:
            raise ValueError("The soft term needs teacher_rows and teacher_head (or teacher_topk).")
        if teacher_head.vocab_size != vocab:
            raise ValueError(f"Teacher vocabulary {teacher_head.vocab_size} differs from the student's {vocab}.")
        teacher_flat = teacher_rows.detach().reshape(-1, teacher_rows.shape[-1])
        if teacher_flat.shape != (count, teacher_head.width):
            raise ValueError(
                f"Teacher rows {tuple(teacher_rows.shape)} do not pair with {count} student rows through a head "
                f"of width {teacher_head.width}."
            )
    if soft is not None:
        divergence = row_divergence(soft.kind, soft.jsd_beta, soft.skew_alpha)
        soft_weights = _flat(soft.weights, count, "SoftSpec.weights").to(dtype)
        active |= soft_weights != 0
    labels = hard_weights = None
    if hard is not None:
        labels = _flat(hard.labels, count, "HardSpec.labels").long()
        scored = labels != hard.ignore_index
        hard_weights = torch.where(scored, _flat(hard.weights, count, "HardSpec.weights").to(dtype), 0.0)
        kept = labels[hard_weights != 0]
        if kept.numel() and (int(kept.min()) < 0 or int(kept.max()) >= vocab):
            raise ValueError(f"Labels must be in [0, {vocab}) or {hard.ignore_index}; got {int(kept.min())}..{int(kept.max())}.")
        labels = torch.where(scored, labels, 0)
        active |= hard_weights != 0
    if chunk_rows is not None and chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}.")
    params = (rows, student_head.weight, student_head.bias)
    plan = _Plan(
        student=student_head,
        teacher_rows=teacher_flat,
        teacher=teacher_head,
        soft=soft,
        divergence=divergence,
        soft_weights=soft_weights,
        labels=labels,
        hard_weights=hard_weights,
        index=active.nonzero().squeeze(1),
        chunk_rows=chunk_rows or default_chunk_rows(vocab),
        dtype=dtype,
        track=torch.is_grad_enabled() and any(p is not None and p.requires_grad for p in params),
        hard_ratio=hard_ratio,
        teacher_topk=None if soft is None else teacher_topk,
    )
    soft_total, hard_total = _FusedLinearTerms.apply(rows, student_head.weight, student_head.bias, plan)
    return {name: value for name, value, spec in (("soft", soft_total, soft), ("hard", hard_total, hard)) if spec is not None}

"""A teacher's distribution kept as its ``k`` most probable tokens plus one tail bucket.

A top-k teacher cache for a language model stores, per scored token, the teacher's ``k`` largest
log-probabilities (at the soft term's temperature ``T``) with their ids, and the log of the mass
left over, ``log(1 − Σ_top p)``. :class:`TopKTeacher` carries that, and :func:`bucket_divergence`
runs any row divergence of :mod:`lightning_kd.losses.logits` against it.

**What is computed.** The vocabulary is coarse-grained into ``k + 1`` outcomes: each kept id, and
"any other id" (the tail). The teacher's bucket probabilities are the stored ones; the student's are
its own probabilities at the kept ids and its total mass on all the others,
``Q_tail = Σ_{i ∉ top} q_i``. The divergence is the chosen one between those two ``(k + 1)``-outcome
distributions:

* exact when the tail is empty (``k = V``, or a teacher whose tail underflows to 0);
* otherwise a lower bound of the full divergence: every soft divergence here (KL, reverse KL, JSD,
  skew KL, skew reverse KL, total variation) is an f-divergence, and merging outcomes never increases
  an f-divergence (the data-processing inequality); the soft cross-entropy ``ce`` is KL plus the
  teacher's bucket entropy. The student is pulled to put the teacher's tail mass on the tail ids
  without being told how to spread it; the top ids are matched exactly;
* ``argmax_ce`` (cross-entropy with the teacher's top class) is exact at every ``k``: the top class is
  always a kept id, so its target is taken among those, never the tail bucket.

This differs from renormalising the top k (dropping the tail and rescaling ``p``), which inflates the
kept probabilities by ``1/(1 − tail)`` and asks the student for zero mass outside them.

**Gradient.** With ``u = z/T`` the student's tempered logits, ``q = softmax(u)`` and ``b(i)`` the bucket
of id ``i``, the loss depends on ``q`` only through the bucket sums ``Q``; the row function returns
``∂L/∂v`` for the bucket log-probabilities ``v = log Q`` read as logits, which is
``Q ⊙ (∂L/∂Q − Σ Q ∂L/∂Q)``; so ``∂L/∂u_i = (q_i / Q_b(i)) · (∂L/∂v)_b(i)``: a kept id takes its
bucket's value, a tail id its share of the tail's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:  # the divergences' module reads this one
    from lightning_kd.losses.logits import RowDivergence

#: The log-mass of an empty bucket: finite (``-inf`` turns ``0 · log 0`` into NaN in the row
#: functions) and so low that its ``exp`` is exactly 0.
EMPTY = -1.0e9


@dataclass(frozen=True, eq=False)
class TopKTeacher:
    """Per row, a teacher's tempered distribution as its ``k`` most probable ids and a tail bucket.

    Attributes:
        indices: ``(R, k)`` long, the kept token ids.
        log_probs: ``(R, k)`` float32, the teacher's ``log softmax(z/T)`` at those ids.
        tail: ``(R,)`` float32, ``log`` of the remaining mass (:data:`EMPTY` when none is left).
        temperature: the ``T`` the probabilities were taken at; a soft term at another ``T`` cannot use them.
        vocab_size: ``V``.
    """

    indices: Tensor
    log_probs: Tensor
    tail: Tensor
    temperature: float
    vocab_size: int

    @property
    def k(self) -> int:
        return self.indices.shape[-1]

    def __len__(self) -> int:
        return self.indices.shape[0]

    def rows(self, index: Tensor | slice) -> TopKTeacher:
        """The rows ``index`` (a selection of rows, same ``k``)."""
        return TopKTeacher(self.indices[index], self.log_probs[index], self.tail[index], self.temperature, self.vocab_size)

    def to(self, device: torch.device | str) -> TopKTeacher:
        return TopKTeacher(self.indices.to(device), self.log_probs.to(device), self.tail.to(device), self.temperature, self.vocab_size)

    @classmethod
    def of_logits(cls, logits: Tensor, k: int, temperature: float) -> TopKTeacher:
        """The top ``k`` of ``(R, V)`` logits' distribution at temperature ``temperature``."""
        return cls.of_rows(logits, lambda chunk: chunk, logits.shape[-1], k, temperature)

    @classmethod
    def of_rows(cls, rows: Tensor, project: Callable[[Tensor], Tensor], vocab_size: int, k: int, temperature: float,
                chunk_elements: int = 1 << 23) -> TopKTeacher:
        """The top ``k`` of ``project(rows)``'s distribution, projecting a chunk of rows at a time (a head's
        input rows: no ``(R, V)`` tensor exists; ``chunk_elements`` logits a chunk)."""
        k = min(k, vocab_size)
        indices = torch.empty(rows.shape[0], k, dtype=torch.long, device=rows.device)
        log_probs = torch.empty(rows.shape[0], k, dtype=torch.float32, device=rows.device)
        tail = torch.empty(rows.shape[0], dtype=torch.float32, device=rows.device)
        step = max(1, chunk_elements // vocab_size)
        with torch.no_grad():
            for start in range(0, rows.shape[0], step):
                part = slice(start, start + step)
                log_p = F.log_softmax(project(rows[part]).float() / temperature, dim=-1)
                top = log_p.topk(k, dim=-1)
                indices[part], log_probs[part], tail[part] = top.indices, top.values, tail_log_mass(log_p, top.indices)
        return cls(indices, log_probs, tail, temperature, vocab_size)


def tail_log_mass(log_probs: Tensor, kept: Tensor) -> Tensor:
    """``log Σ_{i ∉ kept} exp(log_probs_i)`` per row, by log-sum-exp over the other ids (``1 − Σ_kept p``
    would lose the tail to rounding when the kept mass is close to 1); :data:`EMPTY` when nothing is left."""
    others = log_probs.scatter(-1, kept, float("-inf")).logsumexp(dim=-1)
    return others.clamp_min(EMPTY)


def bucket_divergence(
    divergence: RowDivergence, log_q: Tensor, teacher: TopKTeacher, with_grad: bool
) -> tuple[Tensor, Tensor | None]:
    """A row divergence between ``teacher``'s ``k + 1`` buckets and the student's (module docstring).

    Args:
        divergence: a row function of :mod:`lightning_kd.losses.logits` (``(log q, log p, with_grad)``).
        log_q: ``(R, V)`` the student's ``log softmax(z/T)`` (may be overwritten).
        teacher: the same rows' top-k teacher.
        with_grad: also return ``∂L/∂u`` ``(R, V)`` with ``u = z/T``.

    Returns:
        ``(values (R,), ∂L/∂u or None)``.
    """
    kept = teacher.indices
    top_q = log_q.gather(-1, kept)
    others = log_q.scatter_(-1, kept, float("-inf"))  # in place: log_q is not read again but as the tail's
    tail_q = others.logsumexp(dim=-1, keepdim=True).clamp_min(EMPTY)
    student = torch.cat([top_q, tail_q], dim=-1)
    tail = teacher.tail.to(student.dtype).unsqueeze(-1)
    if getattr(divergence, "top_class_target", False):  # the top class is a kept id, never the tail bucket
        tail = torch.full_like(tail, EMPTY)
    target = torch.cat([teacher.log_probs.to(student.dtype), tail], dim=-1)
    values, grad_buckets = divergence(student, target, with_grad)
    if not with_grad:
        return values, None
    # A tail id's share of its bucket, q_i / Q_tail (0 at the kept ids, whose entries are -inf here).
    grad = others.sub_(tail_q).exp_().mul_(grad_buckets[..., -1:])
    return values, grad.scatter_(-1, kept, grad_buckets[..., :-1])

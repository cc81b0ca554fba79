"""Span merging for the cross-vocabulary soft term: compare what each model gives the same piece of text.

Two consecutive shared boundaries ``k`` and ``k+1`` (positions where both encodings have read exactly the
same text, :func:`~lightning_kd.cross_tokenizer.alignment.shared_prefix_pairs`) enclose one piece of text
that each side spells with its own tokens: the student with tokens ``s_k+1 … s_{k+1}``, the teacher with
``t_k+1 … t_{k+1}``. Unmerged, the soft term compares the two next-token distributions at boundary ``k``;
each predicts only the *first* token of the piece, which on the side that cuts the piece finer covers less
text (``un`` against ``unhappy``), so the two rows do not describe the same event.

Merging multiplies each side's row at ``k`` by the probability its own model gives the rest of its tokens of
the piece, each given its prefix (the actual tokens ``s_k+2 … s_{k+1}``; the chain rule):

``c_s = Π_{i = s_k+1}^{s_{k+1}−1} p_s(x_{i+1} | x_{≤i})``, likewise ``c_t`` for the teacher.

The entry of the actual first token then becomes the model's probability of the whole piece, on both sides
alike; the other entries are scaled by the same factor, so a row stays a (now unnormalised) vector with the
relative probabilities of the first token — TRL's GOLD calls this "observed" merging. Both softmaxes of the
chain use the term's temperature ``T`` (the factors are the temperature-``T`` models' probabilities). The
student's factor carries gradient: the term then also trains the student's predictions inside the piece.

Exact, and what is left out: a boundary whose next boundary in the row is unknown (the row's last pair) has
no complete piece and is not compared; nor is one whose piece contains a student position without a target
(label ``-100``: its token probability is not the student's prediction of text).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

#: Teacher rows whose log-softmax is taken at once (no gradient; bounds the memory of a 262k vocabulary).
TEACHER_CHUNK_ROWS = 64


@dataclass(frozen=True)
class MergedSpanScales:
    """Per aligned pair, the natural-log factors of the two rows and whether the pair has a complete piece.

    Attributes:
        student: ``(P,)`` ``log c_s`` (with gradient into the student's logits).
        teacher: ``(P,)`` ``log c_t`` (no gradient).
        complete: ``(P,)`` bool: the pair has a next boundary in its row and every student position inside
            its piece has a target; only these pairs are compared.
    """

    student: Tensor
    teacher: Tensor
    complete: Tensor


def continuation_log_probs(rows: Tensor, positions: Tensor, token_log_probs: Tensor) -> tuple[Tensor, Tensor]:
    """For each pair ``k`` (ordered by row then position), ``Σ token_log_probs[row, i]`` over the positions
    strictly between ``positions[k]`` and the next pair's position in the same row, and whether such a next
    pair exists (the row's last pair has none: its sum is 0 and its flag ``False``).

    Args:
        rows: ``(P,)`` row of each pair.
        positions: ``(P,)`` position of each pair on this side, increasing within a row.
        token_log_probs: ``(B, N)``: at position ``i``, the log-probability of the token at ``i + 1``.
    """
    cumulative = token_log_probs.double().cumsum(dim=1)  # float64: long rows sum thousands of terms
    next_position = positions.roll(-1)
    has_next = rows.roll(-1) == rows
    if has_next.numel():
        has_next[-1] = False
    end = torch.where(has_next, next_position - 1, positions)
    total = cumulative[rows, end] - cumulative[rows, positions]
    return total.to(token_log_probs.dtype), has_next


def token_log_probs(logits: Tensor, targets: Tensor, temperature: float, chunk_rows: int | None = None) -> Tensor:
    """``log softmax(z/T)[target]`` of each row, float32, ``(R,)``; in chunks of rows when ``chunk_rows`` is given.

    Args:
        logits: ``(R, V)``.
        targets: ``(R,)`` token ids (any value where the result is not read: clamped into the vocabulary).
        temperature: ``T``.
        chunk_rows: rows per chunk (``None``: all at once, differentiable).
    """
    targets = targets.clamp(0, logits.shape[-1] - 1)
    if chunk_rows is None:
        scaled = logits.float() / temperature
        return scaled.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - scaled.logsumexp(dim=-1)
    parts = [token_log_probs(logits[i : i + chunk_rows], targets[i : i + chunk_rows], temperature)
             for i in range(0, logits.shape[0], chunk_rows)]
    return torch.cat(parts) if parts else logits.new_zeros(0, dtype=torch.float32)


def merged_span_scales(
    student_rows: Tensor,
    student_scored: Tensor,
    labels: Tensor,
    teacher_logits: Tensor,
    teacher_ids: Tensor,
    pairs: tuple[Tensor, Tensor, Tensor],
    temperature: float,
) -> MergedSpanScales:
    """The merged-span factors of every aligned pair (module docstring).

    Args:
        student_rows: ``(R, Vs)`` the student's logits at its scored positions, row-major.
        student_scored: ``(B, Ns)`` bool, the student's scored positions (labels other than -100).
        labels: ``(B, Ns)`` the student's targets aligned with its logits (the token at ``i + 1``).
        teacher_logits: ``(B, Nt, Vt)`` the teacher's logits on its own encoding.
        teacher_ids: ``(B, Nt)`` the teacher's input ids.
        pairs: ``(row, student position, teacher position)`` of every shared boundary, row-major.
        temperature: ``T`` of both chains.
    """
    rows, student_at, teacher_at = pairs
    with torch.no_grad():
        nexts = torch.cat([teacher_ids[:, 1:], teacher_ids[:, -1:]], dim=1)  # the last position's value is never read
        flat = teacher_logits.reshape(-1, teacher_logits.shape[-1])
        teacher_lp = token_log_probs(flat.detach(), nexts.reshape(-1), temperature, TEACHER_CHUNK_ROWS)
        teacher_lp = teacher_lp.view(teacher_ids.shape)
    teacher, has_next = continuation_log_probs(rows, teacher_at, teacher_lp)
    student_lp = student_rows.new_zeros(student_scored.shape, dtype=torch.float32)
    student_lp = student_lp.masked_scatter(student_scored, token_log_probs(student_rows, labels[student_scored], temperature))
    student, _ = continuation_log_probs(rows, student_at, student_lp)
    unscored, _ = continuation_log_probs(rows, student_at, (~student_scored).float())
    return MergedSpanScales(student=student, teacher=teacher, complete=has_next & (unscored == 0))

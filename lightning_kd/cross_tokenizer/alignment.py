"""Which student tokens and teacher tokens read the same text, from their character offsets.

Teacher and student encode the same text with different tokenizers. Each token carries its character
span ``[start, end)`` in the example's text (HF fast tokenizers' ``return_offsets_mapping=True``);
special tokens and padding have the empty span ``(0, 0)``. Everything here works on those spans alone,
so it holds for any pair of tokenizers whose offsets index the same string:

* :func:`span_overlap` — student token ``i`` and teacher token ``j`` share at least one character;
* :func:`aligned_teacher_states` — per student token, the mean of the teacher vectors overlapping it
  (for hidden-state or attention-row losses across tokenizers);
* :func:`shared_prefix_pairs` — positions where both encodings have read exactly the same text, so a
  causal LM's next-token distributions there predict the same continuation.

**Segments.** For a pair of texts (``text_a``, ``text_b``) the offsets of each part index that part's
own string, so a character of ``text_a`` and one of ``text_b`` may carry the same number. Pass a
``(B, L)`` segment id per token (token type / sequence id) and only tokens of the same segment are
compared; ``None`` for both sides means one text per example.

**Masks.** ``(B, L)`` attention masks (any dtype, nonzero = real token); a masked-out token matches
nothing. Empty spans match nothing whether masked or not.

All comparisons are ``(B, Ls, Lt)`` boolean tensors, vectorised over the batch: about 4 MB per
example at 2,048 tokens a side.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _real_tokens(offsets: Tensor, mask: Tensor | None) -> Tensor:
    """``(B, L)`` bool: the token spells at least one character and the mask (if any) keeps it."""
    real = offsets[..., 1] > offsets[..., 0]
    if mask is not None:
        real = real & mask.bool()
    return real


def _same_segment(student_segments: Tensor | None, teacher_segments: Tensor | None) -> Tensor | None:
    """``(B, Ls, Lt)`` bool: both tokens belong to the same text of the example; ``None`` when one text.

    Raises:
        ValueError: only one side has segment ids (the other's offsets could not be told apart).
    """
    if student_segments is None and teacher_segments is None:
        return None
    if student_segments is None or teacher_segments is None:
        raise ValueError("Pass segment ids for both the student and the teacher tokens, or for neither.")
    return student_segments.unsqueeze(2) == teacher_segments.unsqueeze(1)


def _check_offsets(student_offsets: Tensor, teacher_offsets: Tensor) -> None:
    """Refuse offsets that are not ``(B, L, 2)`` with the same batch size on both sides."""
    for name, offsets in (("student", student_offsets), ("teacher", teacher_offsets)):
        if offsets.dim() != 3 or offsets.shape[-1] != 2:
            raise ValueError(f"{name} offsets must be (B, L, 2) character spans, got shape {tuple(offsets.shape)}.")
    if student_offsets.shape[0] != teacher_offsets.shape[0]:
        raise ValueError(
            f"Student and teacher offsets have batch sizes {student_offsets.shape[0]} and {teacher_offsets.shape[0]}."
        )


def span_overlap(
    student_offsets: Tensor,
    teacher_offsets: Tensor,
    student_mask: Tensor | None = None,
    teacher_mask: Tensor | None = None,
    student_segments: Tensor | None = None,
    teacher_segments: Tensor | None = None,
) -> Tensor:
    """``(B, Ls, Lt)`` bool: student token ``i`` and teacher token ``j`` share at least one character.

    Spans are half-open, so ``[0, 3)`` and ``[3, 5)`` do not overlap. Empty spans (special tokens,
    padding) and masked-out tokens overlap nothing.

    Args:
        student_offsets: ``(B, Ls, 2)`` integer ``[start, end)`` character spans.
        teacher_offsets: ``(B, Lt, 2)`` spans into the same texts.
        student_mask: ``(B, Ls)``, nonzero for real tokens; ``None`` keeps every token.
        teacher_mask: ``(B, Lt)``, likewise.
        student_segments: ``(B, Ls)`` text id of each token for a pair of texts; ``None`` for one text.
        teacher_segments: ``(B, Lt)``, likewise (both or neither).
    """
    _check_offsets(student_offsets, teacher_offsets)
    s_start, s_end = student_offsets[..., 0].unsqueeze(2), student_offsets[..., 1].unsqueeze(2)
    t_start, t_end = teacher_offsets[..., 0].unsqueeze(1), teacher_offsets[..., 1].unsqueeze(1)
    # Two half-open intervals intersect iff the later start comes before the earlier end.
    overlap = torch.maximum(s_start, t_start) < torch.minimum(s_end, t_end)
    overlap &= _real_tokens(student_offsets, student_mask).unsqueeze(2)
    overlap &= _real_tokens(teacher_offsets, teacher_mask).unsqueeze(1)
    same = _same_segment(student_segments, teacher_segments)
    return overlap if same is None else overlap & same


def aligned_teacher_states(teacher_states: Tensor, overlap: Tensor) -> tuple[Tensor, Tensor]:
    """Per student token, the mean of the teacher vectors whose tokens overlap it.

    Args:
        teacher_states: ``(B, Lt, H)`` teacher vectors (hidden states, attention rows, ...).
        overlap: ``(B, Ls, Lt)`` bool from :func:`span_overlap`.

    Returns:
        ``(states (B, Ls, H) float32, has_partner (B, Ls) bool)``: a student token with no overlapping
        teacher token (special tokens, padding, text the teacher did not encode) gets a zero vector and
        ``False``. Gradients flow into ``teacher_states`` through the mean (a plain matmul).
    """
    if teacher_states.dim() != 3 or overlap.dim() != 3 or teacher_states.shape[:2] != (overlap.shape[0], overlap.shape[2]):
        raise ValueError(
            f"teacher_states {tuple(teacher_states.shape)} must be (B, Lt, H) and overlap {tuple(overlap.shape)} (B, Ls, Lt)."
        )
    weights = overlap.to(torch.float32)
    counts = weights.sum(dim=2)
    # Summing then dividing keeps each mean exact to float32 rounding; clamping only touches the
    # partnerless rows, whose sums are already zero.
    sums = torch.bmm(weights, teacher_states.to(torch.float32))
    return sums / counts.clamp_min(1.0).unsqueeze(2), counts > 0


def _complete_prefix(offsets: Tensor, real: Tensor, segments: Tensor | None) -> Tensor:
    """``(B, L)`` bool: once a real token is read, every character before its end has been read.

    A byte-level tokenizer may split one multi-byte character into several tokens that all carry that
    character's span; after the first of them the text read so far is a partial character, though its
    end offset already points past it. A token qualifies when no later real token of its segment starts
    before its end.
    """
    length = offsets.shape[1]
    later = torch.ones(length, length, dtype=torch.bool, device=offsets.device).triu(diagonal=1)
    starts_before = offsets[..., 0].unsqueeze(1) < offsets[..., 1].unsqueeze(2)  # (B, i, k): start_k < end_i
    blocking = starts_before & later & real.unsqueeze(1)
    if segments is not None:
        blocking &= segments.unsqueeze(1) == segments.unsqueeze(2)
    return real & ~blocking.any(dim=2)


def shared_prefix_pairs(
    student_offsets: Tensor,
    teacher_offsets: Tensor,
    student_mask: Tensor | None = None,
    teacher_mask: Tensor | None = None,
    student_segments: Tensor | None = None,
    teacher_segments: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Student and teacher positions where both encodings have read the same text prefix.

    A causal LM's prediction at token ``i`` conditions on the text its tokens ``0..i`` spell, which ends
    at character ``end_i``. When student token ``i`` and teacher token ``j`` end at the same character
    (same segment, both real with non-empty spans), both predictions condition on the same text and
    predict the same continuation, each in its own vocabulary. This is how next-token positions are
    aligned across tokenizers.

    **Exact:** the text prefixes agree character for character. Byte-level BPE (``Ġword`` covers
    `` word``) and SentencePiece (``▁word``) put a word's leading space in its first token, WordPiece
    drops it; in every case ends coincide at word boundaries, and wherever else both tokenizers happen
    to cut. Special tokens (BOS, ``[CLS]``) are not text and are not compared: a prefix that differs
    only by them counts as shared. Text the tokenizer normalises (lowercasing, accent stripping) is
    compared by position in the original string.

    **Skipped:** positions whose end no token of the other side shares (inside a word the two split
    differently, e.g. ``un|happy`` vs ``unh|appy``), and a token followed by another token of its
    segment that starts before its end (a multi-byte character split over byte tokens: only the last
    of them has read the whole character).

    Args:
        student_offsets: ``(B, Ls, 2)`` integer ``[start, end)`` character spans.
        teacher_offsets: ``(B, Lt, 2)`` spans into the same texts.
        student_mask: ``(B, Ls)``, nonzero for real tokens; ``None`` keeps every token.
        teacher_mask: ``(B, Lt)``, likewise.
        student_segments: ``(B, Ls)`` text id of each token for a pair of texts; ``None`` for one text.
        teacher_segments: ``(B, Lt)``, likewise (both or neither).

    Returns:
        ``(batch, student_position, teacher_position)``, each ``(P,)`` int64, ordered by batch then
        student position. Each student position pairs with at most one teacher position and vice versa.
    """
    _check_offsets(student_offsets, teacher_offsets)
    s_real = _real_tokens(student_offsets, student_mask)
    t_real = _real_tokens(teacher_offsets, teacher_mask)
    s_ok = _complete_prefix(student_offsets, s_real, student_segments)
    t_ok = _complete_prefix(teacher_offsets, t_real, teacher_segments)
    same_end = student_offsets[..., 1].unsqueeze(2) == teacher_offsets[..., 1].unsqueeze(1)
    same_end &= s_ok.unsqueeze(2) & t_ok.unsqueeze(1)
    same = _same_segment(student_segments, teacher_segments)
    if same is not None:
        same_end &= same
    batch, student_position, teacher_position = same_end.nonzero(as_tuple=True)
    return batch, student_position, teacher_position

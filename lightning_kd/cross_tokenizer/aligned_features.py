"""A teacher of another tokenizer seen at the student's token positions, for hidden-state terms.

A hidden-state term (TinyBERT's embedding/hidden/final MSE, DistilBERT's cosine) compares the student's
vector at token ``i`` with the teacher's at the same token. With two encodings of one text, the teacher's
counterpart of student token ``i`` is the mean of the teacher vectors whose tokens share a character with it
(:func:`~lightning_kd.cross_tokenizer.alignment.aligned_teacher_states`). :func:`aligned_to_student` rewrites the
teacher's hidden states that way, ``(B, Lt, H)`` → ``(B, Ls, H)``, and takes the student tokens without such a
partner (special tokens, whitespace-only tokens) out of the positions the terms average over, so every
position-wise hidden-state term runs unchanged. The default step's intermediate terms read it, and so do methods
whose own terms compare positions or relations between them (LRC-BERT, CKD, MGSKD), through
:meth:`~lightning_kd.core.method_hooks.MethodHooks.aligned_teacher`.

What stays refused: attention maps, Q/K/V relations and logits per position — their rows *and* columns are
positions of one encoding, and a mean of teacher rows is no attention distribution of the student's tokens.
Text pairs (``text_b``) are refused too: each text's offsets restart at 0, so spans of the two texts would overlap.
"""

from __future__ import annotations

import dataclasses

from torch import Tensor

from lightning_kd.core.features import Features
from lightning_kd.cross_tokenizer.alignment import aligned_teacher_states, span_overlap
from lightning_kd.stages.positions import TERM_POSITIONS, term_positions


def aligned_to_student(batch: dict[str, Tensor], teacher_batch: dict[str, Tensor], teacher: Features) -> tuple[dict[str, Tensor], Features]:
    """``(terms_batch, teacher)``: the student's batch with the positions the terms average over restricted to
    student tokens that have a teacher partner, and the teacher's hidden states at the student's positions.

    Raises:
        KeyError: a batch without both encodings' character offsets.
        ValueError: a batch of text pairs (two segments whose offsets both start at 0).
    """
    if "offset_mapping" not in batch or "offset_mapping" not in teacher_batch:
        raise KeyError("Aligning a teacher of another tokenizer needs both encodings' character offsets: give the data "
                       "module teacher_tokenizer.")
    segments = batch.get("token_type_ids")
    if segments is not None and bool((segments != 0).any()):
        raise ValueError("Hidden-state terms across tokenizers align one text per example; text pairs have offsets that "
                         "restart in the second text. Use a method that compares pooled vectors (KD, PKD, …).")
    overlap = span_overlap(batch["offset_mapping"], teacher_batch["offset_mapping"], batch.get("attention_mask"),
                           teacher_batch.get("attention_mask"))
    states = [aligned_teacher_states(state, overlap) for state in teacher.hidden_states or ()]
    partner = overlap.any(dim=2)
    positions = term_positions(batch)
    restricted = partner if positions is None else positions.bool() & partner
    terms_batch = {**batch, TERM_POSITIONS: restricted}
    labels = batch.get("labels")
    if labels is not None and labels.dim() == 2:  # token targets (terms on scored positions read them): the same restriction
        terms_batch["labels"] = labels.masked_fill(~partner, -100)
    aligned = dataclasses.replace(
        teacher, hidden_states=tuple(state for state, _ in states) if teacher.hidden_states is not None else None,
        attention_mask=partner.long(),
    )
    return terms_batch, aligned

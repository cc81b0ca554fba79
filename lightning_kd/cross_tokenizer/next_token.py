"""The soft term of a causal LM distilled from a teacher with another vocabulary.

Teacher and student read the same text through their own tokenizers (two encodings, with character
offsets in one coordinate system per row; see the data module's ``teacher_tokenizer``). Where both have
read exactly the same text (:func:`~lightning_kd.cross_tokenizer.alignment.shared_prefix_pairs`), their
next-token distributions predict the same continuation, each over its own vocabulary. The term compares
them there, at the positions the student's labels score, with the prediction loss's knobs:

* ``cross_vocabulary: uld`` — the Universal Logit Distillation distance (sorted probabilities, L1;
  needs no token correspondence; ``uld_top`` cuts the sort to the top entries, a lower bound);
* ``matched`` — ``soft_loss`` over the tokens that spell the same text in both vocabularies plus one
  bucket per side for the rest (:class:`~lightning_kd.losses.cross_vocabulary.VocabularyMatch`);
* ``hybrid`` — ``matched`` plus ULD between the unmatched parts.

With ``merge_spans`` (ULD only), each side's row is first scaled by the probability its model gives the rest
of the text up to the next shared boundary, so both rows describe the same piece of text
(:mod:`~lightning_kd.cross_tokenizer.merged_spans`, GOLD's merging).

The value is ``soft_weight`` × the mean over aligned positions (per example with ``per_sample``), with
``T²`` on the KL-family parts of ``matched``/``hybrid`` as ``t2_scale`` says (ULD is an L1 distance between
probabilities, like total variation: never scaled).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from lightning_kd.cross_tokenizer.alignment import shared_prefix_pairs
from lightning_kd.cross_tokenizer.merged_spans import merged_span_scales
from lightning_kd.losses.cross_vocabulary import VocabularyMatch, hybrid_rows, matched_divergence_rows, uld_rows

if TYPE_CHECKING:
    from lightning_kd.core.features import Features
    from lightning_kd.losses.prediction import PredictionLoss


def aligned_positions(batch: dict[str, Tensor], teacher_batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """``(batch, student position, teacher position)`` pairs that read the same text, at the student's scored
    positions (prepared labels other than -100: the student predicts a target there).

    Raises:
        KeyError: a batch without character offsets (a data module without ``teacher_tokenizer``).
    """
    rows, student, teacher = _shared_boundaries(batch, teacher_batch)
    scored = _scored_pairs(batch, rows, student)
    return rows[scored], student[scored], teacher[scored]


def _shared_boundaries(batch: dict[str, Tensor], teacher_batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Every pair of positions that read the same text, scored or not (:func:`shared_prefix_pairs`)."""
    if "offset_mapping" not in batch or "offset_mapping" not in teacher_batch:
        raise KeyError(
            "Aligning a causal-LM teacher of another tokenizer needs both encodings' character offsets "
            "(offset_mapping, teacher_offset_mapping): give the data module teacher_tokenizer."
        )
    return shared_prefix_pairs(
        batch["offset_mapping"], teacher_batch["offset_mapping"], batch.get("attention_mask"), teacher_batch.get("attention_mask")
    )


def _scored_pairs(batch: dict[str, Tensor], rows: Tensor, student: Tensor) -> Tensor:
    """Which pairs sit at a student position with a target."""
    labels = batch.get("labels")
    if labels is None:
        return torch.ones_like(rows, dtype=torch.bool)
    return labels[rows, student] != -100


def cross_vocabulary_soft(
    prediction: PredictionLoss,
    student: Features,
    teacher: Features,
    batch: dict[str, Tensor],
    teacher_batch: dict[str, Tensor],
    match: VocabularyMatch | None = None,
    per_sample: bool = False,
) -> Tensor:
    """The weighted soft term between a student and a teacher of another vocabulary (module docstring).

    Args:
        prediction: the method's prediction loss (``cross_vocabulary``, ``uld_top``, ``merge_spans``,
            ``soft_loss``, ``temperature``, ``t2_scale``, ``soft_weight``).
        student: the student's features: whole ``(B, Ns, Vs)`` logits or compact rows covering its scored positions.
        teacher: the teacher's whole ``(B, Nt, Vt)`` logits on its own encoding.
        batch: the student's prepared batch (labels aligned with the logits, ``offset_mapping``).
        teacher_batch: the teacher's encoding (``offset_mapping``, ``attention_mask``).
        match: the vocabulary match (``matched``/``hybrid``).
        per_sample: ``(B,)`` per-example means (0 for an example without aligned positions).
    """
    rows, s_at, t_at = _shared_boundaries(batch, teacher_batch)
    keep = _scored_pairs(batch, rows, s_at)
    scales = None
    if prediction.merge_spans:
        scored = batch["labels"] != -100
        scales = merged_span_scales(student.logits_at(scored), scored, batch["labels"], teacher.logits,
                                    teacher_batch["input_ids"], (rows, s_at, t_at), prediction.temperature)
        keep = keep & scales.complete
    rows, s_at, t_at = rows[keep], s_at[keep], t_at[keep]
    positions = torch.zeros(batch["input_ids"].shape, dtype=torch.bool, device=rows.device)
    positions[rows, s_at] = True  # pairs come in row-major student order, as logits_at returns rows
    student_rows = student.logits_at(positions)
    teacher_rows = teacher.logits[rows, t_at]
    if scales is None:
        values = _rows(prediction, student_rows, teacher_rows, match)
    else:  # merge_spans is ULD's (checked by PredictionLoss)
        values = uld_rows(student_rows, teacher_rows, prediction.temperature, top=prediction.uld_top,
                          student_log_scale=scales.student[keep], teacher_log_scale=scales.teacher[keep])
    if per_sample:
        size = batch["input_ids"].shape[0]
        total = values.new_zeros(size).index_add(0, rows, values)
        count = values.new_zeros(size).index_add(0, rows, torch.ones_like(values))
        return prediction.soft_weight * total / count.clamp_min(1.0)
    mean = values.sum() / max(values.numel(), 1)
    return prediction.soft_weight * mean


def _rows(prediction: PredictionLoss, student_rows: Tensor, teacher_rows: Tensor, match: VocabularyMatch | None) -> Tensor:
    """Per aligned position, the chosen distance (``T²`` on the KL-family parts when ``t2_scale``)."""
    kind, temperature = prediction.cross_vocabulary, prediction.temperature
    scale = temperature**2 if prediction.t2_scale and prediction.soft_loss != "tvd" else 1.0
    if kind == "uld":
        return uld_rows(student_rows, teacher_rows, temperature, top=prediction.uld_top)
    if match is None:
        raise ValueError(f"cross_vocabulary {kind!r} needs the two vocabularies' match (VocabularyMatch.between).")
    divergence = dict(kind=prediction.soft_loss, jsd_beta=prediction.jsd_beta, skew_alpha=prediction.skew_alpha)
    if kind == "matched":
        return scale * matched_divergence_rows(student_rows, teacher_rows, match.to(student_rows.device), temperature, **divergence)
    return hybrid_rows(student_rows, teacher_rows, match.to(student_rows.device), temperature, matched_weight=scale,
                       top=prediction.uld_top, **divergence)

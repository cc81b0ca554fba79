"""Which rows of a batch the student's hard term may read: the ``labelled`` batch key.

In the token-level stages (masked LM, causal LM) ``-100`` in ``labels`` already means "this position is
not scored", and the teacher terms score exactly the positions that are not ``-100`` (the soft term's
positions, ``term_positions``, compact logit rows, the teacher cache). An unlabelled row of transfer
data must still be scored by every teacher term, so its labels cannot say that it is unlabelled. A data
module with unlabelled rows (``unlabelled_file`` / ``labelled_examples``; :mod:`lightning_kd.data.unlabelled_corpus`)
therefore marks every training row with :data:`LABELLED`, a ``(B,)`` bool that is ``True`` where the hard
term may read the row.

The one reader is the student's own loss (:func:`~lightning_kd.core.features.capture` with labels): it reads
:func:`hard_labels`, the labels with every unmarked row's set to ``-100``, and never hands them to the
model's own forward; the stage scores them with :meth:`~lightning_kd.stages.base.Stage.labelled_rows_loss`,
the mean over the labelled rows' scored positions, an exact 0 (zero gradient) when the batch has none. Every
other reader sees the batch's labels unchanged. A batch without the key (every run without unlabelled data,
validation and test, batches a model wrote) is read as before.

The classification stage needs no key: a class id of ``-100`` is its unlabelled row
(:mod:`lightning_kd.data.unlabelled`); a classification batch that carries the key is read the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from lightning_kd.stages.base import IGNORE_INDEX

#: Batch key of the ``(B,)`` bool marks: ``True`` where the hard term may read the row's labels.
LABELLED = "labelled"


def marks_rows(batch: Mapping[str, Any]) -> bool:
    """Whether ``batch`` says which of its rows are labelled (it then holds unlabelled transfer data)."""
    return LABELLED in batch


def hard_labels(batch: Mapping[str, Tensor]) -> Tensor:
    """The labels the student's hard loss reads: ``batch["labels"]`` with the rows that :data:`LABELLED` marks
    ``False`` set to ``-100`` throughout (the batch's own labels when it has no marks).

    Raises:
        ValueError: the marks are not one per row, or the labels are floating-point scores (regression),
            which have no "not scored" value.
    """
    labels, marks = batch["labels"], batch.get(LABELLED)
    if marks is None:
        return labels
    if marks.dim() != 1 or marks.shape[0] != labels.shape[0]:
        raise ValueError(
            f"The batch's {LABELLED!r} key holds one bool per row, shape ({labels.shape[0]},); got {tuple(marks.shape)}."
        )
    if labels.is_floating_point():
        raise ValueError(
            f"The batch marks unlabelled rows ({LABELLED!r}), but its labels are regression scores, which have no "
            "'not scored' value; give every regression example its score."
        )
    keep = marks.to(labels.device).bool().reshape(-1, *([1] * (labels.dim() - 1)))
    return labels.masked_fill(~keep, IGNORE_INDEX)

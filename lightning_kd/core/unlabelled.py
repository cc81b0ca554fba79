"""Which methods train on data with unlabelled rows, checked when a fit starts.

An unlabelled row (class id ``-100`` in classification, :mod:`lightning_kd.data.unlabelled`; a row marked
``labelled=False`` in the masked-LM and causal-LM stages, :mod:`lightning_kd.stages.labelled_rows`) reaches
every teacher term, while the student's hard term skips it.
That is right for any method whose terms either compare the student with a teacher or read the labels
only through the hard term. It is not for a run whose unlabelled rows nothing would read (no teacher, or
a method that trains on the task loss alone), nor for a strategy that reads a gold label per example
(MT-BERT, RL-KD's agent): those are refused here, with the reason, before any work.
"""

from __future__ import annotations

from typing import Any


def check_unlabelled_rows(method: Any, datamodule: Any) -> None:
    """Refuse ``method`` when ``datamodule`` has unlabelled training rows it cannot train on.

    Args:
        method: the :class:`~lightning_kd.core.module.DistillationModule` about to fit.
        datamodule: the trainer's data module; one without ``has_unlabelled_rows`` has none.

    Raises:
        ValueError: the method or its multi-teacher strategy cannot use unlabelled rows; the message says why.
    """
    if not getattr(datamodule, "has_unlabelled_rows", False):
        return
    strategy, name = method.multi_teacher, type(method).__name__
    refusals = [
        (name, None if len(method.teachers) else "it has no teacher to label them, and its hard term skips them"),
        (name, method.unlabelled_refused),
        (f"The {type(strategy).__name__} strategy", strategy.unlabelled_refusal()),
    ]
    for who, reason in refusals:
        if reason:
            raise ValueError(
                f"{who} cannot train on unlabelled rows (unlabelled_file / labelled_examples of the data): {reason}. "
                "Remove unlabelled_file and labelled_examples, or choose a method/strategy that reads a teacher on every row."
            )

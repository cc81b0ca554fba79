"""Unlabelled training rows next to labelled ones: transfer data that the teachers label softly.

Two ways to declare them (arguments of :class:`~lightning_kd.data.GlueDataModule`):

* ``unlabelled_file``: a CSV/TSV/JSONL of text without labels, appended to the training split;
* ``labelled_examples=N``: only the first ``N`` examples of the seeded shuffle that ``max_train_samples`` /
  ``skip_train_samples`` use keep their labels, so they are the very examples ``max_train_samples=N`` (same
  skip) would take; the rest of the (subset of the) split becomes unlabelled.

An unlabelled row carries the class id :data:`UNLABELLED` (``-100``, the losses' ignore index). The rows stay
in the training split, so the sampler shuffles them with the labelled ones, ``example_index`` numbers them
all and the teacher cache and mid-epoch resume need nothing new. The hard term reads only labelled rows
(:class:`~lightning_kd.stages.classification.SequenceClassification`); teacher terms read every row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from datasets import Dataset, concatenate_datasets

from lightning_kd.data.task_source import TaskSource
from lightning_kd.stages.base import IGNORE_INDEX

#: The class id of a row without a label: the index the hard loss ignores.
UNLABELLED = IGNORE_INDEX


def check_labelled_examples(labelled_examples: int, split: str, rows: int) -> None:
    """Refuse a ``labelled_examples`` that leaves no training row unlabelled.

    Args:
        labelled_examples: the argument.
        split: what the training split holds, for the message (``"the sst2 training split has 100 examples"``).
        rows: how many rows it holds.
    """
    if labelled_examples >= rows:
        raise ValueError(f"labelled_examples={labelled_examples} keeps every row labelled: {split}. Use a smaller "
                         "labelled_examples, or remove it.")


class KeepFirstLabels:
    """``Dataset.map(batched=True, with_indices=True)`` function: rows ``0 … count-1`` keep their label, the
    others get :data:`UNLABELLED`. A class (not a closure) so ``datasets`` fingerprints ``count`` into its cache.

    Args:
        count: how many leading rows keep their labels.
    """

    def __init__(self, count: int) -> None:
        self.count = count

    def __call__(self, batch: dict[str, list[Any]], indices: list[int]) -> dict[str, list[Any]]:
        """The batch's labels, those of rows from ``count`` on replaced by :data:`UNLABELLED`."""
        return {"label": [label if index < self.count else UNLABELLED for label, index in zip(batch["label"], indices)]}


@dataclass(frozen=True)
class TrainingCounts:
    """How many training rows have a label and how many do not (``unit``: what a row is, for the message)."""

    labelled: int
    unlabelled: int
    unit: str = "examples"

    def line(self, task: str) -> str:
        """The one line the data module prints at setup."""
        total = self.labelled + self.unlabelled
        return (f"lightning_kd: {task} training split: {self.labelled} labelled and {self.unlabelled} unlabelled {self.unit} "
                f"({self.labelled / total:.1%} labelled)")


def with_unlabelled(
    examples: Dataset,
    source: TaskSource,
    task: str,
    *,
    labelled_examples: int | None,
    unlabelled_file: str | None,
) -> tuple[Dataset, TrainingCounts]:
    """The training examples with their unlabelled rows, and the counts.

    Args:
        examples: the normalised training split after the ``skip``/``max`` subset, in the seeded shuffle's
            order when ``labelled_examples`` is set (its first rows are those that keep labels).
        source: the task's source, which reads ``unlabelled_file``.
        task: the task's name, for messages.
        labelled_examples: keep the labels of this many leading rows; the rest become unlabelled.
        unlabelled_file: a file of unlabelled text to append.

    Raises:
        ValueError: ``labelled_examples`` leaves no row unlabelled, or the file's texts are single sentences
            where the task's are pairs (or the reverse).
    """
    labelled = len(examples)
    if labelled_examples is not None:
        check_labelled_examples(labelled_examples, f"the {task} training split has {len(examples)} examples (after "
                                "skip_train_samples/max_train_samples)", len(examples))
        examples = examples.map(KeepFirstLabels(labelled_examples), batched=True, with_indices=True, desc="Unlabelling")
        labelled = labelled_examples
    if unlabelled_file is not None:
        extra = source.load_unlabelled(unlabelled_file, UNLABELLED)
        if ("text_b" in extra.column_names) != ("text_b" in examples.column_names):
            ours, theirs = ("pairs", "single texts") if "text_b" in examples.column_names else ("single texts", "pairs")
            raise ValueError(
                f"{unlabelled_file}: its rows are {theirs} but the {task} examples are {ours}; give it the same text "
                "columns as the labelled data (text_columns, else text_a [+ text_b] or text)."
            )
        examples = concatenate_datasets([examples, extra])  # one schema: every reader writes example_features
    return examples, TrainingCounts(labelled, len(examples) - labelled)

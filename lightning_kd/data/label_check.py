"""The classes of a user's classification data, checked across its splits before anything is built.

Without ``label_names`` the classes of ``text-classification`` data are the labels found in the
training file. One stray row (``maybe`` in a binary task) used to add a class silently: a student
trained and exported with three outputs, or, with a teacher, an error that blamed the teacher
("predicts 2 labels but the task has 3") without naming the row. :func:`check_label_splits` compares
the training labels with those of the validation and test data and refuses, naming file, line and
label, a training label the evaluation data never has, and an evaluation label the training data
never has. ``data.init_args.label_names: [...]`` states the classes explicitly (then every label of
every split must be one of them, which the readers check row by row).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_kd.data.labels import label_key
from lightning_kd.data.readers.lines import DataFileError

_SHOWN = 8


@dataclass
class LabelCensus:
    """Which labels one split has, and where each first appears.

    Attributes:
        where: the file (or ``<dataset> (<split> split)``).
        first: each label's first line (file) or row (dataset), 1-based for lines, 0-based for rows.
        rows: how many rows carry each label.
        unit: ``"line"`` for files, ``"row"`` for datasets.
    """

    where: str
    first: dict[int | str, int] = field(default_factory=dict)
    rows: dict[int | str, int] = field(default_factory=dict)
    unit: str = "line"

    def add(self, position: int, raw: Any) -> None:
        key = label_key(raw)
        self.first.setdefault(key, position)
        self.rows[key] = self.rows.get(key, 0) + 1

    @property
    def labels(self) -> list[int | str]:
        return list(self.first)


def census(labels: Iterable[tuple[int, Any]], where: str, unit: str = "line") -> LabelCensus:
    """The census of ``(position, raw label)`` pairs (a reader's ``iter_table_labels``, or a dataset's column)."""
    found = LabelCensus(where, unit=unit)
    for position, raw in labels:
        found.add(position, raw)
    return found


def check_label_splits(train: LabelCensus, evaluation: list[LabelCensus], knob: str = "data.init_args.label_names") -> None:
    """Refuse a training label no evaluation split has, or an evaluation label the training data lacks.

    Args:
        train: the training split's census.
        evaluation: the validation/test splits' censuses (none: nothing to compare, nothing refused).
        knob: the setting that states the classes explicitly, for the message.

    Raises:
        DataFileError: naming the file, the line of the label's first row, the label and the fix.
    """
    if not evaluation:
        return
    seen = {key for split in evaluation for key in split.labels}
    where = " and ".join(Path(split.where).name if split.unit == "line" else split.where for split in evaluation)
    only_train = [key for key in train.labels if key not in seen]
    if only_train:
        key = only_train[0]
        classes = _listed(_sorted(set(train.labels) | seen))
        also = f" (and {_listed(only_train[1:])} too)" if len(only_train) > 1 else ""
        have = "has" if len(evaluation) == 1 else "have"
        count = len(set(train.labels))
        outcome = (
            f"{count} classes where the evaluation data has {len(seen)}" if count != len(seen)
            else "a class the evaluation data never has"
        )
        raise _error(
            train, key,
            f"label {key!r} appears only in the training data ({_rows(train.rows[key])}){also}; {where} {have} only "
            f"{_listed(_sorted(seen))}. Every training label becomes a class of the model, so it would get {outcome}. "
            f"Fix or remove those rows, or, if {key!r} is a real class, list the classes explicitly: {knob}: [{classes}].",
        )
    for split in evaluation:
        unknown = [key for key in split.labels if key not in train.first]
        if unknown:
            key = unknown[0]
            raise _error(
                split, key,
                f"label {key!r} never occurs in the training data, whose labels are {_listed(_sorted(train.labels))}; "
                f"the model could not predict it. Fix the row(s), or list every class explicitly with {knob}: [...].",
            )


def _error(split: LabelCensus, key: int | str, problem: str) -> DataFileError:
    if split.unit == "line":
        return DataFileError(split.where, split.first[key], problem)
    return DataFileError(split.where, None, f"row {split.first[key]}: {problem}")


def _rows(count: int) -> str:
    return "1 row" if count == 1 else f"{count} rows"


def _sorted(keys: Iterable[int | str]) -> list[int | str]:
    return sorted(keys, key=lambda k: (isinstance(k, str), str(k) if isinstance(k, str) else k))


def _listed(keys: list[int | str]) -> str:
    shown = ", ".join(str(k) for k in keys[:_SHOWN])
    return shown + (f", … ({len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else "")

"""Hugging Face datasets as a task source: loading, split choice, and column normalisation."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from datasets import ClassLabel, Dataset, DatasetDict, load_dataset, load_from_disk

from lightning_kd.data.labels import LabelEncoder, infer_label_encoder
from lightning_kd.data.readers.examples import Encode, example_features, make_example
from lightning_kd.data.readers.fields import raw_field

VALIDATION_NAMES = ("validation", "dev", "valid", "val")


def load_hf(name_or_dir: str, config: str | None, cache_dir: str | None) -> DatasetDict:
    """Load a hub dataset with ``load_dataset``, or a ``DatasetDict.save_to_disk`` directory.

    Raises:
        ValueError: the directory holds a single ``Dataset`` rather than a ``DatasetDict``.
    """
    path = Path(name_or_dir)
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        loaded = load_from_disk(str(path))
    else:
        loaded = load_dataset(name_or_dir, config, cache_dir=cache_dir)
    if not isinstance(loaded, DatasetDict):
        raise ValueError(
            f"{name_or_dir} holds a single split; save a DatasetDict with 'train' and 'validation' splits "
            "(DatasetDict({'train': ..., 'validation': ...}).save_to_disk(path))"
        )
    return loaded


def pick_split(data: DatasetDict, wanted: str, split: str, where: str) -> Dataset:
    """Return split ``wanted`` of ``data``, with the usual fallbacks for user datasets.

    ``validation`` may also be spelled ``dev``/``valid``/``val``; a missing ``test`` falls back
    to the validation split (the same policy as GLUE's hidden test labels).

    Raises:
        ValueError: no such split; the message lists those present.
    """
    candidates = [wanted]
    if split in ("validation", "test"):
        candidates += [name for name in VALIDATION_NAMES if name != wanted]
    for name in candidates:
        if name in data:
            return data[name]
    raise ValueError(f"{where} has no {wanted!r} split (needed for {split}); it has {sorted(data)}")


def hf_label_encoder(train: Dataset, label_column: str, names: Sequence[str] | None) -> LabelEncoder:
    """The classes of a user's HF dataset: ``names``, else its ``ClassLabel``, else its sorted labels."""
    feature = train.features.get(label_column)
    if feature is None:
        raise ValueError(f"the training split has no label column {label_column!r}; it has {train.column_names}")
    if names is None and isinstance(feature, ClassLabel):
        return LabelEncoder(feature.num_classes, tuple(feature.names))
    return infer_label_encoder(train.unique(label_column), names)


class NormaliseRows:
    """``Dataset.map`` function: HF rows → ``text_a``/``text_b``/``label`` with located errors.

    Args:
        texts: row → one or two texts (the task's template, or the user's columns).
        label_column: the column holding the label.
        encode: raw label → id or score.
        where: names the dataset and split in error messages.
        pair: whether rows give two texts.
        hidden_is_error: treat label ``-1`` (the hub's marker for a hidden test label) as an error;
            only for benchmark tasks, since -1 can be a real score in a user's regression data.
    """

    def __init__(
        self,
        texts: Callable[[Mapping[str, Any]], tuple[str, ...]],
        label_column: str,
        encode: Encode,
        where: str,
        pair: bool,
        hidden_is_error: bool,
    ) -> None:
        self.texts, self.label_column, self.encode, self.where = texts, label_column, encode, where
        self.keys = ("text_a", "text_b", "label") if pair else ("text_a", "label")
        self.hidden_is_error = hidden_is_error

    def __call__(self, batch: dict[str, list[Any]], indices: list[int]) -> dict[str, list[Any]]:
        """Normalise one batch of rows; ``indices`` locate a bad row in the error message."""
        columns = list(batch)
        out: dict[str, list[Any]] = {key: [] for key in self.keys}
        for position, index in enumerate(indices):
            row = {column: batch[column][position] for column in columns}
            try:
                if self.hidden_is_error and row.get(self.label_column) == -1:
                    raise ValueError("label is -1, the hub's marker for a hidden test label; use a labelled split")
                example = make_example(self.texts(row), raw_field(row, self.label_column), self.encode)
                if len(example) != len(self.keys):
                    raise ValueError(f"expected {len(self.keys) - 1} text column(s), got {len(example) - 1}")
            except ValueError as error:
                raise ValueError(f"{self.where}, row {index}: {error}") from None
            for key in self.keys:
                out[key].append(example[key])
        return out


def normalise_hf(dataset: Dataset, normalise: NormaliseRows, regression: bool) -> Dataset:
    """Apply ``normalise`` to every row, keeping only the normalised columns."""
    return dataset.map(
        normalise,
        batched=True,
        with_indices=True,
        remove_columns=dataset.column_names,
        features=example_features("text_b" in normalise.keys, regression),
        desc="Normalising columns",
    )

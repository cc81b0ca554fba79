"""Where a task's labelled examples come from, and how each split is read into a ``datasets.Dataset``.

One source per data module, checked when it is built (before anything is read):

* ``hf_dataset``: a hub dataset or a ``DatasetDict.save_to_disk`` directory (exclusive with files);
* ``data_dir``: the GLUE or SuperGLUE root in the standard layout (see :mod:`lightning_kd.data.tasks`);
* ``train_file`` / ``validation_file`` / ``test_file``: override ``data_dir`` per split, or stand
  alone. A file in the task's own layout (``.tsv`` for GLUE, ``.jsonl`` for SuperGLUE) is read
  like the standard files when no ``text_columns``/``label_column`` are given; otherwise any
  CSV/TSV/JSONL is read with the named columns;
* nothing, for the embedded tasks (``rotten_tomatoes``, ``twenty_newsgroups``): the packaged files.

The ``test`` split falls back to the validation data whenever no test data is named (GLUE and
SuperGLUE test labels are hidden). Examples are written once to Arrow files by
``Dataset.from_generator`` (memory-mapped, never a Python list of the corpus); the cache key includes
each file's size and modification time, so editing a file is picked up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict, NamedSplit
from datasets.exceptions import DatasetGenerationError

from lightning_kd.data.hf_source import (
    VALIDATION_NAMES,
    NormaliseRows,
    hf_label_encoder,
    load_hf,
    normalise_hf,
    pick_split,
)
from lightning_kd.data.label_check import LabelCensus, census, check_label_splits
from lightning_kd.data.labels import LabelEncoder, infer_label_encoder
from lightning_kd.data.readers import (
    iter_rotten_tomatoes,
    iter_table_file,
    iter_task_file,
    iter_twenty_newsgroups,
    resolve_text_columns,
)
from lightning_kd.data.readers.generic import iter_table_labels, iter_unlabelled_table
from lightning_kd.data.readers.examples import example_features
from lightning_kd.data.readers.fields import TextColumns
from lightning_kd.data.readers.generic import default_text_columns
from lightning_kd.data.readers.lines import DataFileError, data_suffix, require_file
from lightning_kd.data.sources import locate_embedded, resolve_source
from lightning_kd.data.tasks import SPLITS, JsonlLayout, TaskSpec, TsvLayout

_NATIVE_SUFFIXES = {TsvLayout: (".tsv",), JsonlLayout: (".jsonl", ".json")}
#: The reader of each embedded task: ``read(path=<packaged path>, split=…, seed=…)`` yields ``{"text_a", "label"}``.
_EMBEDDED_READERS = {"rotten_tomatoes": iter_rotten_tomatoes, "twenty_newsgroups": iter_twenty_newsgroups}


class TaskSource:
    """Reads the splits of one task from the source the user named.

    Args:
        spec: the task.
        data_dir: GLUE/SuperGLUE root directory.
        hf_dataset: hub dataset name or ``save_to_disk`` directory.
        hf_config: hub configuration; for ``glue``/``super_glue`` datasets it defaults to the task's (``"sst2"``).
        files: ``{"train": path, "validation": path, "test": path}``; missing or ``None`` = not given.
        text_columns: one or two text columns of the user's files / HF dataset.
        label_column: the label column of the user's files / HF dataset (default ``"label"``).
        label_names: class names in id order, for string labels in the user's data.
        seed: seed of the embedded data's movie split.
        cache_dir: where ``datasets`` writes its Arrow cache (default: its own cache).

    Raises:
        ValueError: no source, conflicting sources, or arguments that do not apply to this source.
    """

    def __init__(
        self,
        spec: TaskSpec,
        *,
        data_dir: str | None = None,
        hf_dataset: str | None = None,
        hf_config: str | None = None,
        files: dict[str, str | None] | None = None,
        text_columns: Sequence[str] | None = None,
        label_column: str | None = None,
        label_names: Sequence[str] | None = None,
        seed: int = 42,
        cache_dir: str | None = None,
    ) -> None:
        self.spec = spec
        self.data_dir, self.hf_dataset, self.hf_config = data_dir, hf_dataset, hf_config
        self.files = {split: (files or {}).get(split) for split in SPLITS}
        self.text_columns = tuple(text_columns) if text_columns is not None else None
        self.label_column = label_column
        self.label_names = tuple(label_names) if label_names is not None else None
        self.seed, self.cache_dir = seed, cache_dir
        self._validate()
        self._encoder: LabelEncoder | None = None
        self._hf_data: DatasetDict | None = None

    # ----------------------------------------------------------------------------------- checks
    def _validate(self) -> None:
        spec, name = self.spec, self.spec.name
        own_files = any(self.files.values())
        if self.hf_dataset and (self.data_dir or own_files):
            raise ValueError(
                f"Conflicting data sources for task {name!r}: hf_dataset={self.hf_dataset!r} together with "
                "data_dir/train_file/validation_file/test_file. Pass hf_dataset alone, or files alone."
            )
        if self.hf_config and not self.hf_dataset:
            raise ValueError("hf_config only applies to hf_dataset; pass hf_dataset=... or remove hf_config.")
        if self.data_dir and spec.benchmark not in ("glue", "superglue"):
            raise ValueError(
                f"data_dir reads the GLUE/SuperGLUE layouts, which task {name!r} does not have; "
                "pass train_file=/validation_file= (CSV, TSV or JSONL) or hf_dataset= instead."
            )
        if not (self.data_dir or self.hf_dataset or own_files) and spec.benchmark != "embedded":
            raise ValueError(f"No data for task {name!r}. {self._how_to_provide()}")
        if (self.text_columns is not None or self.label_column) and not (own_files or self.hf_dataset):
            raise ValueError(
                "text_columns/label_column describe your own files or HF dataset; the standard layout of "
                f"task {name!r} already names its columns. Remove them, or pass train_file=/hf_dataset=."
            )
        if self.text_columns is not None and len(self.text_columns) not in (1, 2):
            raise ValueError(f"text_columns must name 1 or 2 columns, got {list(self.text_columns)}")
        self._validate_label_names()

    def _validate_label_names(self) -> None:
        names, spec = self.label_names, self.spec
        if names is None:
            return
        if spec.is_regression:
            raise ValueError(f"label_names do not apply to the regression task {spec.name!r}; remove them.")
        if len(names) < 2 or len(set(names)) != len(names):
            raise ValueError(f"label_names must list at least two distinct names, got {list(names)}")
        if spec.num_labels is not None and len(names) != spec.num_labels:
            raise ValueError(f"task {spec.name!r} has {spec.num_labels} classes but label_names lists {len(names)}")
        if not (any(self.files.values()) or self.hf_dataset):
            raise ValueError(f"label_names apply to your own files/HF data; task {spec.name!r} fixes its own labels.")

    def _how_to_provide(self) -> str:
        spec = self.spec
        if spec.benchmark == "custom":
            return "Pass train_file=/validation_file= (CSV, TSV or JSONL; see text_columns) or hf_dataset=."
        root = "GLUE" if spec.benchmark == "glue" else "SuperGLUE"
        hub = "nyu-mll/glue" if spec.benchmark == "glue" else "aps/super_glue"
        return (
            f"Pass data_dir= (the {root} root holding {spec.directory}/{spec.files.train} and "
            f"{spec.directory}/{spec.files.validation}), hf_dataset= (e.g. {hub!r} with hf_config="
            f"{spec.hf_config!r}, or a DatasetDict.save_to_disk directory), or train_file=/validation_file=."
        )

    # ----------------------------------------------------------------------------------- labels
    def label_encoder(self) -> LabelEncoder:
        """How raw labels become ids; for ``text-classification`` this may read the training labels."""
        if self._encoder is None:
            self._encoder = self._make_encoder()
        return self._encoder

    def _make_encoder(self) -> LabelEncoder:
        spec = self.spec
        if spec.num_labels is not None:
            return LabelEncoder(spec.num_labels, self.label_names or spec.label_names)
        if self.label_names is not None:
            return LabelEncoder(len(self.label_names), self.label_names)
        column = self.label_column or "label"
        if self.hf_dataset:
            train = pick_split(self._hf(), spec.hf_splits.train, "train", self.hf_dataset)
            encoder = hf_label_encoder(train, column, None)
            if not _is_class_label(train, column):  # classes inferred from the training labels
                check_label_splits(self._hf_census("train", train, column), self._hf_evaluation_censuses(column))
            return encoder
        located = self._file_for("train")
        if located is None:
            raise ValueError(
                f"Task {spec.name!r} learns its classes from the training labels: pass train_file= or label_names=."
            )
        columns = resolve_text_columns(located, self.text_columns)
        train = census(iter_table_labels(located, columns, column), str(located))
        if not train.rows:
            raise no_examples(located, "train")
        # The classes are the training labels: a stray one would become a class, so compare with the other splits.
        evaluation = [
            census(iter_table_labels(path, resolve_text_columns(path, self.text_columns), column), str(path))
            for path in self._evaluation_files(located)
        ]
        check_label_splits(train, evaluation)
        return infer_label_encoder(train.labels)

    def _evaluation_files(self, train: Path) -> list[Path]:
        """The validation and test files that are not the training file (each once)."""
        found: list[Path] = []
        for split in ("validation", "test"):
            path = self._file_for(split)
            if path is not None and path != train and path not in found:
                found.append(path)
        return found

    def _hf_census(self, split: str, dataset: Dataset, column: str) -> LabelCensus:
        return census(enumerate(dataset[column]), f"{self.hf_dataset} ({split} split)", unit="row")

    def _hf_evaluation_censuses(self, column: str) -> list[LabelCensus]:
        data, censuses, seen = self._hf(), [], set()
        for split in ("validation", "test"):
            name = next((n for n in (self.spec.hf_splits[split], *VALIDATION_NAMES) if n in data), None)
            if name is None or name in seen or name == self.spec.hf_splits.train or column not in data[name].column_names:
                continue
            seen.add(name)
            labels = data[name][column]
            if any(label == -1 for label in labels):  # hidden test labels: nothing to compare
                continue
            censuses.append(census(enumerate(labels), f"{self.hf_dataset} ({name} split)", unit="row"))
        return censuses

    # ----------------------------------------------------------------------------------- splits
    def has(self, split: str) -> bool:
        """Whether this source can provide ``split`` (a missing file still counts: it errors on load)."""
        if self.hf_dataset:
            data = self._hf()
            fallbacks = VALIDATION_NAMES if split != "train" else ()
            return any(name in data for name in (self.spec.hf_splits[split], *fallbacks))
        return self._file_for(split) is not None or (self.spec.benchmark == "embedded" and not any(self.files.values()))

    def load(self, split: str) -> Dataset:
        """The normalised examples of ``split``: columns ``text_a``, [``text_b``], ``label``.

        Raises:
            FileNotFoundError: a file or directory of the standard layout is missing.
            ValueError: malformed data (the message names the file and line) or no data for ``split``.
        """
        if self.hf_dataset:
            return self._load_hf(split)
        encode = self.label_encoder().encode
        path = self._file_for(split)
        if path is None and self.spec.benchmark == "embedded" and not any(self.files.values()):
            packaged = locate_embedded(self.spec.name)
            read = _EMBEDDED_READERS[self.spec.name]
            return self._generate(split, read, {"path": packaged, "split": split, "seed": self.seed}, packaged, pair=False)
        if path is None:
            raise ValueError(f"No {split} data for task {self.spec.name!r}: pass {split}_file=.")
        if self._is_native(path):
            return self._generate(split, iter_task_file, {"path": path, "spec": self.spec, "encode": encode},
                                  path, pair=self.spec.is_pair)
        columns = resolve_text_columns(path, self.text_columns)
        kwargs = {"path": path, "text_columns": columns, "label_column": self.label_column or "label", "encode": encode}
        return self._generate(split, iter_table_file, kwargs, path, pair=len(columns) == 2)

    def load_unlabelled(self, path: str, label: int) -> Dataset:
        """The examples of a CSV/TSV/JSONL file of text without labels, each labelled ``label`` (the "no label"
        value). Its text columns are named as in your own files: ``text_columns``, else ``text_a`` [+ ``text_b``]
        or ``text``; other columns (a label column too) are ignored.

        Raises:
            FileNotFoundError: the file does not exist.
            ValueError: malformed rows (the message names the file and line) or no rows.
        """
        located = require_file(resolve_source(path), "Check the unlabelled_file argument.")
        columns = resolve_text_columns(located, self.text_columns)
        kwargs = {"path": located, "text_columns": columns, "label": label}
        return self._generate("unlabelled", iter_unlabelled_table, kwargs, located, pair=len(columns) == 2)

    def _file_for(self, split: str) -> Path | None:
        """The file that holds ``split``: an explicit file, else the standard layout under ``data_dir``."""
        explicit = self.files[split] or (self.files["validation"] if split == "test" else None)
        if explicit:
            return Path(resolve_source(explicit))
        if self.data_dir and self.spec.files is not None:
            root = Path(self.data_dir)
            if not root.is_dir():
                raise FileNotFoundError(f"data_dir {root} does not exist. {self._how_to_provide()}")
            return root / self.spec.directory / self.spec.files[split]
        return None

    def _is_native(self, path: Path) -> bool:
        layout = self.spec.layout
        if layout is None or self.text_columns is not None or self.label_column is not None:
            return False
        return data_suffix(path) in _NATIVE_SUFFIXES[type(layout)]

    def _generate(
        self, split: str, read: Callable[..., Iterator[dict[str, Any]]], kwargs: dict[str, Any], path: Path, pair: bool
    ) -> Dataset:
        # The first example is read here, before ``datasets`` starts a build, so a missing file or a bad
        # first row fails with the reader's own message, and a split without examples names its file
        # (``datasets`` would say 'Instruction "train" corresponds to no data!').
        if next(read(**kwargs), None) is None:
            raise no_examples(path, split)
        stat = path.stat()
        try:
            return Dataset.from_generator(
                _generate_examples,
                features=example_features(pair, self.spec.is_regression),
                cache_dir=self.cache_dir,
                # The stamp is unused by the generator; it makes ``datasets``' cache key change with the file.
                gen_kwargs={"read": read, "kwargs": kwargs, "stamp": (str(path), stat.st_size, stat.st_mtime_ns)},
                split=NamedSplit(split),
            )
        except DatasetGenerationError as error:
            # ``datasets`` wraps reader errors; surface the reader's message (file, line, problem).
            if isinstance(error.__cause__, (ValueError, OSError)):
                raise error.__cause__ from None
            raise

    # ----------------------------------------------------------------------------------- HF
    def _hf(self) -> DatasetDict:
        if self._hf_data is None:
            config = self.hf_config
            if config is None and Path(self.hf_dataset).name in ("glue", "super_glue"):
                config = self.spec.hf_config  # e.g. "nyu-mll/glue" needs "sst2"; other datasets have their own
            self._hf_data = load_hf(self.hf_dataset, config, self.cache_dir)
        return self._hf_data

    def _load_hf(self, split: str) -> Dataset:
        dataset = pick_split(self._hf(), self.spec.hf_splits[split], split, self.hf_dataset)
        if self.text_columns is not None:
            texts = TextColumns(*self.text_columns)
        elif self.spec.texts is not None:
            texts = self.spec.texts
        else:
            texts = TextColumns(*default_text_columns(dataset.column_names, f"{self.hf_dataset} split {split!r}"))
        pair = len(texts.names) == 2 if isinstance(texts, TextColumns) else self.spec.is_pair
        normalise = NormaliseRows(
            texts,
            self.label_column or "label",
            self.label_encoder().encode,
            where=f"{self.hf_dataset} ({split} split)",
            pair=pair,
            hidden_is_error=self.spec.benchmark in ("glue", "superglue"),
        )
        return normalise_hf(dataset, normalise, self.spec.is_regression)


def _is_class_label(dataset: Dataset, column: str) -> bool:
    """Whether ``column`` is a ``ClassLabel`` (its classes are the feature's names, not inferred from the rows)."""
    return type(dataset.features.get(column)).__name__ == "ClassLabel"


def no_examples(path: Path, split: str) -> DataFileError:
    """The error for a split whose file yields no example (a header alone, blank lines, no row of the split)."""
    return DataFileError(
        path, None,
        f"no examples for the {split} split: the file has no data rows (only a header or blank lines?). "
        f"Add rows, or point {split}_file/data_dir at the right file.",
    )


def _generate_examples(
    read: Callable[..., Iterator[dict[str, Any]]], kwargs: dict[str, Any], stamp: tuple[Any, ...]
) -> Iterator[dict[str, Any]]:
    """``Dataset.from_generator`` entry point: the reader's examples (``stamp`` only keys the cache)."""
    yield from read(**kwargs)

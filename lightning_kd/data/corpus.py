"""Raw text corpora for pretraining: files or a Hugging Face dataset → Arrow (or streamed) splits.

Files go through ``datasets.load_dataset`` with the builder their extension implies (``.txt``: one
example per line; ``.csv``/``.tsv``; ``.json``/``.jsonl``; ``.parquet``; any of them compressed),
so a corpus is memory-mapped Arrow on disk, or read lazily with ``streaming=True``, and never a
Python list. ``embedded:<name>`` entries resolve to packaged files (``embedded:rotten_tomatoes``
is a CSV with a ``text`` column). Glob patterns (``shards/*.txt``) are allowed.
"""

from __future__ import annotations

import glob
import hashlib
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict, IterableDataset, load_dataset, load_from_disk
from datasets.arrow_writer import SchemaInferenceError
from datasets.exceptions import DatasetGenerationError

from lightning_kd.data.readers.lines import DataFileError, data_suffix, first_undecodable, not_utf8, open_binary
from lightning_kd.data.sources import resolve_source

Corpus = Dataset | IterableDataset

# Extension → (datasets builder, builder options as hashable pairs).
_BUILDERS: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    ".txt": ("text", ()),
    ".text": ("text", ()),
    ".csv": ("csv", ()),
    ".tsv": ("csv", (("sep", "\t"),)),
    ".json": ("json", ()),
    ".jsonl": ("json", ()),
    ".parquet": ("parquet", ()),
}
_HOW = "Pass train_files= (text, one document or sentence per line; or CSV/JSONL with text_column) or hf_dataset=."


def resolve_files(files: list[str], argument: str) -> list[str]:
    """Resolve ``embedded:`` names and check that every file (or glob pattern) exists.

    Raises:
        FileNotFoundError: a file is missing or a pattern matches nothing.
    """
    resolved = []
    for entry in files:
        path = resolve_source(entry)
        if not (glob.glob(path) if glob.has_magic(path) else Path(path).is_file()):
            raise FileNotFoundError(f"{argument} entry {entry!r}: no file at {path}. {_HOW}")
        resolved.append(path)
    return resolved


def load_files(
    train_files: list[str], validation_files: list[str] | None, cache_dir: str | None, streaming: bool
) -> dict[str, Corpus]:
    """Load text files as ``{"train": ..., ["validation": ...]}`` with ``datasets``' builder for their type.

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: an unsupported extension, or files of different types.
    """
    data_files = {"train": resolve_files(train_files, "train_files")}
    if validation_files:
        data_files["validation"] = resolve_files(validation_files, "validation_files")
    kinds = {_BUILDERS.get(data_suffix(path)) for paths in data_files.values() for path in paths}
    if None in kinds or len(kinds) != 1:
        suffixes = sorted({data_suffix(path) for paths in data_files.values() for path in paths})
        raise ValueError(f"corpus files must share one type among {sorted(_BUILDERS)}; found {suffixes}")
    builder, options = kinds.pop()
    try:
        loaded = load_dataset(builder, data_files=data_files, cache_dir=cache_dir, streaming=streaming, **dict(options))
    except DatasetGenerationError as error:
        # ``datasets`` says only "An error occurred while generating the dataset"; name the file instead.
        located = _located(error, data_files)
        if located is None:
            raise
        raise located from error
    return dict(loaded)


def _located(error: DatasetGenerationError, data_files: dict[str, list[str]]) -> DataFileError | None:
    """The file-level error behind a failed build (bytes that are not UTF-8, a split without text), if it is one."""
    cause = error.__cause__
    data_files = {split: [p for entry in paths for p in (sorted(glob.glob(entry)) if glob.has_magic(entry) else [entry])]
                  for split, paths in data_files.items()}
    if isinstance(cause, UnicodeDecodeError):
        for paths in data_files.values():
            for path in paths:
                if first_undecodable(path) is not None:
                    return not_utf8(path)
    if isinstance(cause, SchemaInferenceError):
        for split, paths in data_files.items():
            if not any(_has_rows(path) for path in paths):
                return DataFileError(
                    ", ".join(paths), None,
                    f"no text for the {split} split: the file(s) are empty (or only blank lines / a header). "
                    f"Add text, or pass other {split}_files.",
                )
    return None


def _has_rows(path: str) -> bool:
    """Whether a corpus file has a data row (a non-blank line; after the header for CSV/TSV)."""
    with open_binary(path) as handle:
        lines = sum(1 for raw in handle if raw.strip())
    return lines > (1 if data_suffix(path) in (".csv", ".tsv") else 0)


def load_hf_corpus(name_or_dir: str, config: str | None, cache_dir: str | None, streaming: bool) -> dict[str, Corpus]:
    """Load a hub dataset or a ``save_to_disk`` directory (a ``Dataset`` counts as its train split)."""
    path = Path(name_or_dir)
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        loaded: Any = load_from_disk(str(path))
        splits = dict(loaded) if isinstance(loaded, DatasetDict) else {"train": loaded}
        if streaming:
            splits = {name: split.to_iterable_dataset() for name, split in splits.items()}
    else:
        splits = dict(load_dataset(name_or_dir, config, cache_dir=cache_dir, streaming=streaming))
    if "train" not in splits:
        raise ValueError(f"{name_or_dir} has no 'train' split; it has {sorted(splits)}")
    return {name: split for name, split in splits.items() if name in ("train", "validation")}


class HashBucket:
    """``filter`` predicate sending a stable hash fraction of rows to validation (streamed corpora).

    A streamed corpus has no known length to split by count, so each row goes to validation when
    ``sha1(seed:text)`` falls below ``fraction``; the same text always lands on the same side.

    Args:
        text_column: the column that is hashed.
        fraction: share of rows for validation.
        seed: changes which rows are drawn.
        validation: keep the validation side (``True``) or the training side.
    """

    def __init__(self, text_column: str, fraction: float, seed: int, validation: bool) -> None:
        self.text_column, self.fraction, self.seed, self.validation = text_column, fraction, seed, validation

    def __call__(self, row: dict[str, Any]) -> bool:
        """Whether ``row`` belongs to the side this predicate keeps."""
        digest = hashlib.sha1(f"{self.seed}:{row[self.text_column]}".encode()).digest()
        return (int.from_bytes(digest[:8], "big") / 2**64 < self.fraction) == self.validation


def split_off_validation(train: Corpus, text_column: str, fraction: float, seed: int) -> tuple[Corpus, Corpus]:
    """Hold out ``fraction`` of the training rows (lines) as validation, deterministically for ``seed``.

    Raises:
        ValueError: the corpus has fewer than two rows.
    """
    if isinstance(train, IterableDataset):
        return (train.filter(HashBucket(text_column, fraction, seed, validation=False)),
                train.filter(HashBucket(text_column, fraction, seed, validation=True)))
    if len(train) < 2:
        raise ValueError(f"cannot hold out validation rows from a corpus of {len(train)} row(s); pass validation_files")
    held_out = min(len(train) - 1, max(1, round(len(train) * fraction)))
    parts = train.train_test_split(test_size=held_out, shuffle=True, seed=seed)
    return parts["train"], parts["test"]

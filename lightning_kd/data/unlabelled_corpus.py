"""Unlabelled transfer data for the corpus data modules: masked-LM blocks, causal-LM blocks and examples.

Two arguments of :class:`~lightning_kd.data.PretrainDataModule` and :class:`~lightning_kd.data.CausalLMDataModule`,
alone or together, as :class:`~lightning_kd.data.GlueDataModule`'s (:mod:`lightning_kd.data.unlabelled`):

* ``unlabelled_file``: a file of text in a form the module reads its training files in (``.txt`` one
  document per line, ``.csv``/``.tsv``/``.jsonl``/``.parquet`` with ``text_column``; in the causal-LM
  module's example mode, rows with ``prompt_field``/``response_field`` or ``messages_field``). It is
  tokenised and packed **on its own**, so a block holds labelled or unlabelled text, never both, and its
  rows follow the training split's (after ``max_train_samples``, which it is not cut by);
* ``labelled_examples=N``: only the first ``N`` rows (blocks or examples) of the training split keep their
  hard term, counted along the seeded shuffle that ``max_train_samples`` uses, so they are exactly the rows
  ``max_train_samples=N`` (same seed) trains on.

The training split holds its labelled rows first, then the unlabelled ones, so a row is labelled exactly
when its ``example_index`` is below the labelled count: the loader marks each row from its index
(:class:`~lightning_kd.data.collators.IndexedRows`) and the collators pass the marks on as the ``(B,)`` bool
batch key :data:`~lightning_kd.stages.labelled_rows.LABELLED`. Nothing is written into the data, and the
marks follow the index through the sampler's shuffle, mid-epoch resume, DDP sharding and the teacher cache
(keyed by ``example_index``). Validation and test splits never hold unlabelled rows. A streamed corpus has
no row index, so it is refused.
"""

from __future__ import annotations

import glob
from pathlib import Path

from datasets import Dataset, concatenate_datasets

from lightning_kd.data.corpus import load_files
from lightning_kd.data.sources import resolve_source
from lightning_kd.data.unlabelled import TrainingCounts, check_labelled_examples


def check_unlabelled_arguments(*, unlabelled_file: str | None, labelled_examples: int | None, streaming: bool) -> None:
    """The constructor checks of the two arguments (the file itself is read at setup).

    Raises:
        ValueError: ``labelled_examples`` is not positive, or either argument is given with ``streaming``.
    """
    if labelled_examples is not None and labelled_examples <= 0:
        raise ValueError(f"labelled_examples must be a positive integer, got {labelled_examples}")
    if streaming and (unlabelled_file is not None or labelled_examples is not None):
        raise ValueError(
            "unlabelled_file / labelled_examples mark each training row by its index in the split, which a streamed "
            "corpus (streaming=True) does not have; set streaming=False, or remove them."
        )


def load_unlabelled_file(path: str, columns: list[str], setting: str, cache_dir: str | None) -> Dataset:
    """The rows of ``unlabelled_file``, read as the module reads its training files, with only ``columns``.

    Args:
        path: the file (an ``embedded:`` name or a glob pattern also work).
        columns: the columns the module tokenises (its text column, or its example fields).
        setting: the argument that names those columns, for the message when one is missing.
        cache_dir: the ``datasets`` cache directory.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: a file type the corpus readers do not know, or a missing column.
    """
    located = resolve_source(path)
    if not (glob.glob(located) if glob.has_magic(located) else Path(located).is_file()):
        raise FileNotFoundError(f"unlabelled_file {path!r}: no file at {located}. Check the unlabelled_file argument.")
    rows = load_files([located], None, cache_dir, streaming=False)["train"]
    missing = [column for column in columns if column not in rows.column_names]
    if missing:
        raise ValueError(
            f"unlabelled_file {path!r} has no column {missing[0]!r}; it has {rows.column_names}. Give it the columns "
            f"of the training files ({setting})."
        )
    return rows.select_columns(columns)


def with_unlabelled_rows(
    train: Dataset,
    extra: Dataset | None,
    *,
    labelled_examples: int | None,
    unit: str,
    unlabelled_file: str | None = None,
) -> tuple[Dataset, TrainingCounts]:
    """The training split laid out labelled rows first, then unlabelled ones, and the counts.

    Args:
        train: the tokenised training split after ``max_train_samples``, in the seeded shuffle's order when
            ``labelled_examples`` is set (its first rows are those that keep their hard term).
        extra: ``unlabelled_file``'s rows, tokenised and packed as ``train``'s were; ``None`` without a file.
        labelled_examples: keep the hard term of this many leading rows; the rest of ``train`` is unlabelled.
        unit: what a row is (``"blocks"``, ``"examples"``), for messages.
        unlabelled_file: the file ``extra`` was read from, for messages.

    Raises:
        ValueError: ``labelled_examples`` leaves no row unlabelled, or the file gives no row.
    """
    labelled = len(train)
    if labelled_examples is not None:
        check_labelled_examples(labelled_examples, f"the training split has {len(train)} {unit} (after max_train_samples)",
                                len(train))
        labelled = labelled_examples
    if extra is not None:
        if len(extra) == 0:
            raise ValueError(
                f"unlabelled_file {unlabelled_file!r} gives no training {unit} (shorter than one block, or every "
                "example dropped); add text, lower block_size, or remove it."
            )
        train = concatenate_datasets([train, extra])  # an indices mapping of `train` is kept, nothing is copied
    return train, TrainingCounts(labelled, len(train) - labelled, unit)

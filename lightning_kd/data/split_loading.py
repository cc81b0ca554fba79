"""What the corpus data modules (MLM blocks, causal-LM blocks and examples) do alike with their splits.

Once a split is tokenised, the same steps follow whatever the rows are: keep a subset
(:func:`limited`), shard a streamed corpus across ranks, and serve it (training rows in an order fixed
by (seed, epoch) that resumes mid-epoch exactly, evaluation rows in order, streamed rows through their
shuffle buffer). :class:`CorpusSplits` gives a data module that lifecycle; the module keeps its own
constructor, tokenisation (``_build``) and docs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from datasets import Dataset, IterableDataset
from datasets.distributed import split_dataset_by_node
from torch.utils.data import DataLoader

from lightning_kd.data.collators import IndexedRows
from lightning_kd.data.sampling import EpochShuffleSampler, ResumableDataLoader, fit_position, global_seed

if TYPE_CHECKING:
    from lightning_kd.data.unlabelled import TrainingCounts

#: Rows a streamed training split shuffles among.
SHUFFLE_BUFFER = 10_000


def limited(rows: Dataset | IterableDataset, split: str, limit: int | None, seed: int, empty: str,
            seeded_order: bool = False) -> Dataset | IterableDataset:
    """``rows`` cut to ``limit`` rows: a seeded random subset of a map-style split, the first rows of a
    streamed one (taken before the training split's shuffle buffer, so a quick run reads little).

    Args:
        split: ``"train"`` (a streamed one gets its shuffle buffer here), or an evaluation split.
        empty: the error message for a map-style split without a row (what to change).
        seeded_order: return a map-style split in the seeded shuffle's order even when nothing is cut, so
            its first ``n`` rows are those ``limit=n`` would keep (``labelled_examples`` counts along it).

    Raises:
        ValueError: a map-style split has no row.
    """
    if isinstance(rows, IterableDataset):
        rows = rows.take(limit) if limit else rows
        return rows.shuffle(seed=seed, buffer_size=SHUFFLE_BUFFER) if split == "train" else rows
    if len(rows) == 0:
        raise ValueError(empty)
    if limit is not None and limit < len(rows):
        rows = rows.shuffle(seed=seed).select(range(limit))
    elif seeded_order:
        rows = rows.shuffle(seed=seed)  # an indices mapping: nothing is rewritten
    return rows


def check_corpus_arguments(
    *,
    train_files: list[str] | None,
    validation_files: list[str] | None,
    hf_dataset: str | None,
    hf_config: str | None,
    validation_fraction: float,
    streaming: bool,
    counts: dict[str, int | None],
    files_hint: str,
) -> None:
    """The constructor checks every corpus data module shares.

    Args:
        counts: arguments that must be positive integers when given (batch sizes, ``num_proc``, limits).
        files_hint: what ``train_files`` hold, for the message when neither or both corpora are given.

    Raises:
        ValueError: no corpus or two, files and dataset options mixed, a fraction or count out of
            range, or ``num_proc`` with ``streaming``.
    """
    if bool(train_files) == bool(hf_dataset):
        raise ValueError(
            f"Pass exactly one corpus: train_files=[...] ({files_hint}) or hf_dataset=...; "
            f"got train_files={train_files!r}, hf_dataset={hf_dataset!r}."
        )
    if validation_files and not train_files:
        raise ValueError("validation_files go with train_files; an hf_dataset brings its own 'validation' split.")
    if hf_config and not hf_dataset:
        raise ValueError("hf_config only applies to hf_dataset.")
    if not 0 < validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    for name, value in counts.items():
        if value is not None and value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value}")
    if streaming and counts.get("num_proc"):
        raise ValueError("num_proc parallelises pre-tokenisation; streaming=True tokenises on the fly. Drop one.")


class CorpusSplits:
    """Lightning's data-module hooks for tokenised corpus splits (mixed into a ``LightningDataModule``).

    The module provides ``_build()`` (fills ``self.datasets``, a no-op once done), ``streaming``,
    ``num_workers``, ``seed``, the limits ``max_train_samples``/``max_eval_samples``, the unlabelled-row
    arguments ``labelled_examples``/``unlabelled_file`` and ``_with_unlabelled``, and sets
    ``self.datasets = {}`` and ``self._sharded = False``. A module whose training split holds unlabelled
    transfer rows sets ``training_counts`` when it builds the split (:mod:`lightning_kd.data.unlabelled_corpus`):
    its training rows are then marked labelled or not.
    """

    #: Labelled and unlabelled training rows, when the split holds unlabelled ones (labelled rows first).
    training_counts: TrainingCounts | None = None

    def prepare_data(self) -> None:
        """Tokenise once (map-style), so every rank then reads ``datasets``' cache."""
        if not self.streaming:
            self._build()

    def setup(self, stage: str | None = None) -> None:
        """Build (or load from cache) the tokenised splits; shard streamed ones across ranks."""
        self._build()
        trainer = self.trainer
        if self.streaming and trainer is not None and trainer.world_size > 1 and not self._sharded:
            self._sharded = True  # setup runs once per stage; shard only once
            self.datasets = {name: split_dataset_by_node(split, rank=trainer.global_rank, world_size=trainer.world_size)
                             for name, split in self.datasets.items()}

    @property
    def has_unlabelled_rows(self) -> bool:
        """Whether the training split has unlabelled rows (known from the arguments, nothing is read): a method
        checks it at fit start (:func:`~lightning_kd.core.unlabelled.check_unlabelled_rows`)."""
        return self.unlabelled_file is not None or self.labelled_examples is not None

    def _limited_split(self, rows: Dataset | IterableDataset, split: str, empty: str) -> Dataset | IterableDataset:
        """A tokenised split cut to the module's limit (:func:`limited`; ``max_train_samples`` or
        ``max_eval_samples``). The training split keeps the seeded order ``labelled_examples`` counts along
        (its labelled rows are those ``max_train_samples`` takes) and is followed by its unlabelled transfer
        rows when it has some (the module's ``_with_unlabelled``)."""
        limit = self.max_train_samples if split == "train" else self.max_eval_samples
        in_order = split == "train" and self.labelled_examples is not None
        rows = limited(rows, split, limit, self.seed, empty, seeded_order=in_order)
        return self._with_unlabelled(rows) if split == "train" and self.has_unlabelled_rows else rows

    def _cached_training_split(self) -> Dataset:
        """The built training split, for a teacher cache's key (the part a fingerprint shares).

        Raises:
            ValueError: the corpus is streamed, so its rows have no stable index.
        """
        if self.streaming:
            raise ValueError(
                "A streamed corpus (streaming=True) has no stable row index to key a teacher cache by; "
                "set streaming=False or remove teacher_cache."
            )
        self._build()
        return self.datasets["train"]

    def _loader(self, split: str, batch_size: int, collate_fn: Callable) -> DataLoader:
        if not self.datasets:
            self._build()
        counts = self.training_counts if split == "train" else None
        return split_loader(self.datasets[split], train=split == "train", batch_size=batch_size, collate_fn=collate_fn,
                            num_workers=self.num_workers, seed=self.seed, position=lambda: fit_position(self.trainer),
                            labelled=counts.labelled if counts is not None else None)


def split_loader(
    dataset: Dataset | IterableDataset,
    *,
    train: bool,
    batch_size: int,
    collate_fn: Callable,
    num_workers: int,
    seed: int,
    position: Callable[[], dict[str, int]],
    labelled: int | None = None,
) -> DataLoader:
    """A loader of one split: map-style training rows (with ``example_index``) shuffled by (seed, epoch)
    and resumable mid-epoch (:mod:`lightning_kd.data.sampling`); anything else in order.

    ``labelled``: training rows with unlabelled transfer rows after their first ``labelled`` (labelled) rows
    are also marked ``labelled`` (:class:`~lightning_kd.data.collators.IndexedRows`)."""
    options: dict[str, Any] = dict(
        batch_size=batch_size, collate_fn=collate_fn, num_workers=num_workers, persistent_workers=num_workers > 0
    )
    if not train or isinstance(dataset, IterableDataset):
        return DataLoader(dataset, **options)
    sampler = EpochShuffleSampler(dataset, global_seed(seed))
    return ResumableDataLoader(IndexedRows(dataset, labelled), sampler=sampler, position=position, **options)

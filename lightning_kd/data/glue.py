"""``GlueDataModule``: sentence(-pair) classification batches for Hugging Face models.

Covers GLUE, SuperGLUE, the embedded Rotten Tomatoes corpus and your own files or HF datasets.
"""

from __future__ import annotations

from typing import Any

import torch
from datasets import Dataset
from pytorch_lightning import LightningDataModule
from pytorch_lightning.utilities import rank_zero_info
from torch.utils.data import DataLoader
from torchmetrics import MetricCollection
from transformers import PreTrainedTokenizerBase

from lightning_kd.cross_tokenizer.teacher_tokenizers import TeacherTokenizer, TeacherTokenizers
from lightning_kd.data.collators import IndexedRows, PaddingCollator
from lightning_kd.data.sampling import EpochShuffleSampler, ResumableDataLoader, fit_position, global_seed
from lightning_kd.data.sources import load_tokenizer
from lightning_kd.data.task_source import TaskSource
from lightning_kd.data.tasks import SPLITS, TaskSpec, get_task
from lightning_kd.data.tokenize import tokenize_examples
from lightning_kd.data.unlabelled import TrainingCounts, with_unlabelled
from lightning_kd.metrics import build_task_metrics

_STAGE_SPLITS = {"fit": ("train", "validation"), "validate": ("validation",), "test": ("test",), "predict": ("test",)}


class GlueDataModule(LightningDataModule):
    """Classification batches for a GLUE/SuperGLUE task, the embedded Rotten Tomatoes, or your data.

    Batches are dicts with ``input_ids``, ``attention_mask``, ``token_type_ids`` (when the tokenizer
    makes them), padded to the longest row of the batch, and ``labels`` (int64 class ids, or float32
    scores for regression tasks such as STS-B). Training batches also carry ``example_index``
    (int64, each row's position in the training split after any ``skip_train_samples`` /
    ``max_train_samples`` subset), the identity a teacher-output cache keys its rows by.

    Unlabelled training rows (transfer data the teachers label softly; see ``docs/unlabelled_data.md``) come
    two ways, alone or together: ``unlabelled_file`` appends a file of text without labels, and
    ``labelled_examples=N`` keeps labels on the first ``N`` examples of the seeded shuffle that
    ``max_train_samples``/``skip_train_samples`` use (the examples ``max_train_samples=N`` would take) and
    drops the others' labels. An unlabelled row's ``labels`` entry is ``-100``: the hard loss is the mean
    over the labelled rows of a batch (0 without any), while teacher terms read every row. The rows are
    shuffled with the labelled ones and numbered by ``example_index`` like them; validation and test are
    untouched. Classification only: a regression score has no "no label" value.

    Data sources (one per module; see :mod:`lightning_kd.data.task_source`): ``data_dir`` with the
    standard layout, ``hf_dataset``, or ``train_file``/``validation_file``/``test_file``. The embedded
    ``rotten_tomatoes`` task needs none. GLUE/SuperGLUE test labels are hidden, so ``test`` evaluates
    on the labelled dev/validation data unless ``test_file`` names other labelled data.

    Nothing is read in ``__init__``: arguments are only checked there. Files are read, cached as
    Arrow by ``datasets`` and tokenised in ``prepare_data``/``setup``.

    Args:
        task: task name, e.g. ``sst2``, ``mnli-mm``, ``boolq``, ``rotten_tomatoes``,
            ``text-classification`` / ``text-regression`` for your own data (case-insensitive).
        tokenizer: model name, local directory or ``embedded:<name>`` of the tokenizer.
        data_dir: GLUE or SuperGLUE root directory in the standard layout (``<data_dir>/SST-2/train.tsv``).
        hf_dataset: Hugging Face dataset name, or a ``DatasetDict.save_to_disk`` directory.
        hf_config: dataset configuration; for ``glue``/``super_glue`` it defaults to the task's (``sst2``, ...).
        train_file: training data (CSV, TSV or JSONL; or the task's own TSV/JSONL layout).
        validation_file: validation data, same formats.
        test_file: test data, same formats (default: the validation data).
        text_columns: one or two text columns of your files/HF dataset (default ``text_a`` [+ ``text_b``]
            or ``text``).
        label_column: label column of your files/HF dataset (default ``label``).
        label_names: class names in id order, mapping string labels to ids (default: the task's names;
            for ``text-classification``, the sorted training labels).
        max_length: truncate examples to this many tokens.
        batch_size: training batch size.
        eval_batch_size: validation/test batch size (default ``batch_size``).
        num_workers: DataLoader worker processes.
        seed: seed of the ``max_*_samples`` subsets and of the embedded data's movie split.
        max_train_samples: use a seeded random subset of this many training examples (quick runs).
        skip_train_samples: skip this many examples of the seeded shuffle of the training split before
            taking ``max_train_samples`` (or the rest), so the stages of one recipe can train on
            disjoint parts of one subset: ``skip 0, max 2000`` then ``skip 2000, max 2000`` split the
            subset that ``max 4000`` takes.
        max_eval_samples: same for validation and test.
        cache_dir: directory for the ``datasets`` Arrow cache (default: the ``datasets`` cache).
        teacher_tokenizer: the tokenizer of a teacher of another family (MPNet, DeBERTa, … for a BERT
            student), one for every teacher or one entry per teacher (``null`` for a teacher that reads the
            student's tokens). Each batch then also carries that teacher's encoding of the same text
            (``teacher_input_ids``, ``teacher_attention_mask``, character offsets; ``teacher{i}_…`` with a
            list), with the same examples, labels and order; the CLI links it to the method. A name equal
            to ``tokenizer`` changes nothing. See :mod:`lightning_kd.cross_tokenizer`.
        unlabelled_file: a CSV/TSV/JSONL of unlabelled text added to the training split: its text columns are
            named as ``text_columns`` says (else ``text_a`` [+ ``text_b``] or ``text``), other columns (a label
            too) are ignored; malformed rows fail with the file and line.
        labelled_examples: keep labels on only this many training examples (the first of the seeded shuffle,
            after ``skip_train_samples``, within ``max_train_samples``); the rest of the split is unlabelled.

    Raises:
        ValueError: unknown task, no data source, conflicting sources, an invalid number, or unlabelled rows
            for a regression task.
    """

    task_head: str = "sequence_classification"

    def __init__(
        self,
        task: str,
        tokenizer: str,
        data_dir: str | None = None,
        hf_dataset: str | None = None,
        hf_config: str | None = None,
        train_file: str | None = None,
        validation_file: str | None = None,
        test_file: str | None = None,
        text_columns: list[str] | None = None,
        label_column: str | None = None,
        label_names: list[str] | None = None,
        max_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 42,
        max_train_samples: int | None = None,
        max_eval_samples: int | None = None,
        cache_dir: str | None = None,
        skip_train_samples: int = 0,
        teacher_tokenizer: TeacherTokenizer = None,
        unlabelled_file: str | None = None,
        labelled_examples: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.task_spec: TaskSpec = get_task(task)
        _check_positive(max_length=max_length, batch_size=batch_size, eval_batch_size=eval_batch_size,
                        max_train_samples=max_train_samples, max_eval_samples=max_eval_samples,
                        labelled_examples=labelled_examples)
        if (unlabelled_file is not None or labelled_examples is not None) and self.task_spec.is_regression:
            raise ValueError(
                f"unlabelled_file/labelled_examples add unlabelled rows, which apply to classification tasks; "
                f"{self.task_spec.name!r} is a regression task, whose scores have no 'no label' value. Remove them."
            )
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if skip_train_samples < 0:
            raise ValueError(f"skip_train_samples must be >= 0, got {skip_train_samples}")
        self.source = TaskSource(
            self.task_spec,
            data_dir=data_dir,
            hf_dataset=hf_dataset,
            hf_config=hf_config,
            files={"train": train_file, "validation": validation_file, "test": test_file},
            text_columns=text_columns,
            label_column=label_column,
            label_names=label_names,
            seed=seed,
            cache_dir=cache_dir,
        )
        self.tokenizer_name = tokenizer
        self.teacher_tokenizers = TeacherTokenizers.of(teacher_tokenizer, tokenizer)
        self._teacher_encoders_loaded: list[tuple[str, PreTrainedTokenizerBase]] | None = None
        self.max_length, self.batch_size = max_length, batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers, self.seed = num_workers, seed
        self.max_train_samples, self.max_eval_samples = max_train_samples, max_eval_samples
        self.skip_train_samples = skip_train_samples
        self.unlabelled_file, self.labelled_examples = unlabelled_file, labelled_examples
        self.training_counts: TrainingCounts | None = None
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self.datasets: dict[str, Dataset] = {}

    # ----------------------------------------------------------------------------- properties
    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The tokenizer, loaded on first use."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.tokenizer_name)
        return self._tokenizer

    @property
    def teacher_encodings(self) -> TeacherTokenizer:
        """The teachers' own tokenizers, normalised (``None`` when every teacher reads the student's tokens):
        the CLI links it to the method's ``teacher_tokenizer``."""
        return self.teacher_tokenizers.argument

    def _teacher_encoders(self) -> list[tuple[str, PreTrainedTokenizerBase]]:
        """``(prefix, tokenizer)`` of each teacher encoding, the tokenizers loaded once."""
        if self._teacher_encoders_loaded is None:
            self._teacher_encoders_loaded = [(prefix, tokenizer) for prefix, _, tokenizer in self.teacher_tokenizers.load()]
        return self._teacher_encoders_loaded

    @property
    def num_labels(self) -> int:
        """Number of model outputs: 1 for regression, else the class count.

        For ``text-classification`` without ``label_names`` this reads the training labels once.
        """
        return self.task_spec.num_labels or self.source.label_encoder().num_labels

    @property
    def label_names(self) -> tuple[str, ...] | None:
        """Class names in id order (``None`` for regression or integer-only labels)."""
        return self.source.label_encoder().names

    def build_metrics(self, prefix: str) -> MetricCollection:
        """The task's metrics keyed ``<prefix><name>``; ``update(logits, labels)``."""
        return build_task_metrics(self.task_spec, prefix, num_labels=self.num_labels)

    @property
    def fingerprint(self) -> dict[str, Any]:
        """What the training rows are, as JSON values (the dataset part of a teacher cache's key).

        The readable settings that shape the rows, plus ``datasets``' fingerprint of the tokenised
        training split, which already covers the source (file path, size and modification time, or
        the HF dataset's own fingerprint), the reader, the tokenizer, ``max_length`` and the seeded
        subset. Reads and tokenises the training split if that has not happened yet.
        """
        train = self._dataset("train")
        return {
            "data_module": type(self).__name__,
            "task": self.task_spec.name,
            "max_length": self.max_length,
            "max_train_samples": self.max_train_samples,
            "skip_train_samples": self.skip_train_samples,
            "seed": self.seed,
            "train_examples": len(train),
            "datasets_fingerprint": train._fingerprint,
            # Only when set, so caches of same-tokenizer runs keep their keys.
            **({"teacher_tokenizer": self.teacher_encodings} if self.teacher_tokenizers else {}),
            **({"labelled_examples": self.labelled_examples} if self.labelled_examples is not None else {}),
            **({"unlabelled_file": self.unlabelled_file} if self.unlabelled_file is not None else {}),
        }

    # ----------------------------------------------------------------------------- lifecycle
    def prepare_data(self) -> None:
        """Read and tokenise every available split once, so ``datasets``' cache is warm for all ranks."""
        for split in SPLITS:
            if self.source.has(split):
                self._dataset(split)

    def setup(self, stage: str | None = None) -> None:
        """Load (from cache) the splits the stage needs: fit → train + validation, test → test."""
        for split in _STAGE_SPLITS.get(stage, SPLITS) if stage else SPLITS:
            if split == "train" or self.source.has(split):
                self.datasets[split] = self._dataset(split)
        if self.has_unlabelled_rows and "train" in self.datasets:
            rank_zero_info(self.training_counts.line(self.task_spec.name))

    @property
    def has_unlabelled_rows(self) -> bool:
        """Whether the training split has unlabelled rows (known from the arguments, nothing is read): a method
        checks it at fit start, refusing those whose labels must be on every row."""
        return self.unlabelled_file is not None or self.labelled_examples is not None

    def _dataset(self, split: str) -> Dataset:
        if split not in self.datasets:
            examples = self.source.load(split)
            limit = self.max_train_samples if split == "train" else self.max_eval_samples
            skip = self.skip_train_samples if split == "train" else 0
            if skip and skip >= len(examples):  # an empty source is the reader's error; only a skip empties it here
                raise ValueError(
                    f"skip_train_samples={skip} leaves no training examples: the {self.task_spec.name} training split "
                    f"has {len(examples)}. Use a smaller skip_train_samples."
                )
            # labelled_examples counts along the same seeded shuffle: its labelled rows are those max_train_samples takes.
            counts_along = split == "train" and self.labelled_examples is not None
            if skip or (limit is not None and limit < len(examples)) or counts_along:
                end = len(examples) if limit is None else min(skip + limit, len(examples))
                examples = examples.shuffle(seed=self.seed).select(range(skip, end))
            if split == "train":
                examples, self.training_counts = with_unlabelled(
                    examples, self.source, self.task_spec.name,
                    labelled_examples=self.labelled_examples, unlabelled_file=self.unlabelled_file,
                )
            self.datasets[split] = tokenize_examples(examples, self.tokenizer, self.max_length, self._teacher_encoders())
        return self.datasets[split]

    # ----------------------------------------------------------------------------- loaders
    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches, in an order fixed by (seed, epoch); resumable mid-epoch.

        The seed is ``seed_everything``'s when set, else ``seed`` (see :mod:`lightning_kd.data.sampling`).
        """
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader | list[Any]:
        """Validation batches in file order (an empty list when the source has no validation data)."""
        return self._loader("validation", self.eval_batch_size) if self.source.has("validation") else []

    def test_dataloader(self) -> DataLoader:
        """Test batches in file order."""
        return self._loader("test", self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        """The test batches, for ``trainer.predict``."""
        return self.test_dataloader()

    def _loader(self, split: str, batch_size: int, shuffle: bool = False) -> DataLoader:
        dataset = self._dataset(split)
        options: dict[str, Any] = dict(
            batch_size=batch_size,
            collate_fn=PaddingCollator(
                pad_token_id=self.tokenizer.pad_token_id or 0,
                padding_side=self.tokenizer.padding_side,
                label_dtype=torch.float32 if self.task_spec.is_regression else torch.long,
                teacher_padding={prefix: (tokenizer.pad_token_id or 0, tokenizer.padding_side)
                                 for prefix, tokenizer in self._teacher_encoders()},
            ),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )
        if not shuffle:
            return DataLoader(dataset, **options)
        sampler = EpochShuffleSampler(dataset, global_seed(self.seed))
        return ResumableDataLoader(IndexedRows(dataset), sampler=sampler, position=self._fit_position, **options)

    def _fit_position(self) -> dict[str, int]:
        return fit_position(self.trainer)


def _check_positive(**values: int | None) -> None:
    for name, value in values.items():
        if value is not None and value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value}")

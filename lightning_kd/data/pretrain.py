"""``PretrainDataModule``: a text corpus as packed, dynamically masked MLM batches."""

from __future__ import annotations

from typing import Any

from datasets import Dataset, Features, IterableDataset, List, Value
from pytorch_lightning import LightningDataModule
from pytorch_lightning.utilities import rank_zero_info
from torch.utils.data import DataLoader
from torchmetrics import MetricCollection
from transformers import PreTrainedTokenizerBase

from lightning_kd.data.collators import MaskingCollator
from lightning_kd.data.corpus import Corpus, load_files, load_hf_corpus, split_off_validation
from lightning_kd.data.masking import continuation_table
from lightning_kd.data.packing import TokenizeAndPack
from lightning_kd.data.split_loading import CorpusSplits, check_corpus_arguments
from lightning_kd.data.sources import load_tokenizer
from lightning_kd.data.unlabelled_corpus import check_unlabelled_arguments, load_unlabelled_file, with_unlabelled_rows
from lightning_kd.metrics import build_mlm_metrics

# int32 ids halve the cached corpus on disk versus the int64 that ``map`` would infer.
_BLOCK_FEATURES = Features({"input_ids": List(Value("int32"))})


class PretrainDataModule(CorpusSplits, LightningDataModule):
    """Masked-language-model batches from raw text, scaled to BERT-corpus size.

    Text (files or an HF dataset) is tokenised without special tokens, concatenated and cut into
    blocks of ``block_size`` tokens framed by ``[CLS]``/``[SEP]`` (see :mod:`lightning_kd.data.packing`),
    and cached as Arrow by ``datasets`` (``cache_dir``), in ``num_proc`` processes. With
    ``streaming=True`` nothing is pre-tokenised: text is read, tokenised and packed on the fly
    (training order comes from a 10,000-block shuffle buffer).

    Masking happens in the collator, fresh for every batch (see :class:`~lightning_kd.data.collators.MaskingCollator`):
    batches hold masked ``input_ids``, ``attention_mask``, ``token_type_ids`` and ``labels``
    (-100 off the masked positions). Map-style training batches also carry ``example_index`` (int64,
    each block's index in the packed training split), and ``masking_seed`` makes training masks static.

    Unlabelled transfer data (``unlabelled_file``, ``labelled_examples``; see ``docs/unlabelled_data.md`` and
    :mod:`lightning_kd.data.unlabelled_corpus`): the file is packed into blocks of its own, placed after the
    training split's, and ``labelled_examples=N`` keeps the hard term of the first ``N`` blocks of the seeded
    shuffle ``max_train_samples`` uses. Training batches then also carry ``labelled`` (bool ``(B,)``): the
    student's own MLM loss reads only the rows marked ``True`` (0 for a batch without any), while every
    teacher term reads every row's masked positions. Labelled and unlabelled blocks are shuffled together:
    an epoch is all of them, and a batch's labelled share is the split's on average.

    Args:
        tokenizer: model name, local directory or ``embedded:<name>`` of the tokenizer.
        train_files: corpus files (``.txt`` one example per line, ``.csv``/``.tsv``/``.jsonl``/``.parquet``
            with ``text_column``; compressed or glob patterns allowed; ``embedded:rotten_tomatoes``).
        validation_files: held-out files of the same type (default: ``validation_fraction`` of the training lines).
        hf_dataset: Hugging Face dataset name, or a ``save_to_disk`` directory (instead of files).
        hf_config: configuration of ``hf_dataset``.
        text_column: the column with the text (``text`` for ``.txt`` files).
        validation_fraction: share of training lines held out when there is no validation data.
        block_size: tokens per block, ``[CLS]`` and ``[SEP]`` included.
        mlm_probability: share of tokens chosen for prediction (BERT: 0.15).
        whole_word_mask: choose whole words (a WordPiece head with its ``##`` pieces).
        batch_size: training batch size.
        eval_batch_size: validation batch size (default ``batch_size``).
        num_workers: DataLoader worker processes.
        num_proc: processes for tokenising and packing (not with ``streaming``).
        cache_dir: directory of the ``datasets`` cache (raw and packed Arrow files; a ``save_to_disk``
            corpus keeps its packed cache next to its own files).
        streaming: read the corpus lazily instead of pre-tokenising it (for corpora too big to cache).
        max_train_samples: use this many training blocks (a seeded random subset; the first ones when streaming).
        max_eval_samples: use this many validation blocks.
        seed: seed of the validation hold-out, the subsets, the shuffle buffer and the validation masks.
        masking_seed: make training masks a deterministic function of ``(masking_seed, example_index)``,
            identical every epoch (static masking), as a teacher-output cache needs. ``None`` (default)
            keeps dynamic masking: fresh masks for every batch. Not with ``streaming``.
        unlabelled_file: a file of in-domain text without labels (a form ``train_files`` takes, with
            ``text_column``), packed into blocks of its own that only the teacher terms read. Not with ``streaming``.
        labelled_examples: keep the student's own MLM loss on only this many training blocks (the first of
            the seeded shuffle, after ``max_train_samples``); the teachers label the rest. Not with ``streaming``.

    Raises:
        ValueError: no corpus or two corpora, an out-of-range number, or unlabelled rows with ``streaming``.
    """

    task_head: str = "masked_lm"
    num_labels: int | None = None

    def __init__(
        self,
        tokenizer: str,
        train_files: list[str] | None = None,
        validation_files: list[str] | None = None,
        hf_dataset: str | None = None,
        hf_config: str | None = None,
        text_column: str = "text",
        validation_fraction: float = 0.01,
        block_size: int = 128,
        mlm_probability: float = 0.15,
        whole_word_mask: bool = False,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        num_proc: int | None = None,
        cache_dir: str | None = None,
        streaming: bool = False,
        max_train_samples: int | None = None,
        max_eval_samples: int | None = None,
        seed: int = 42,
        masking_seed: int | None = None,
        unlabelled_file: str | None = None,
        labelled_examples: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_corpus_arguments(
            train_files=train_files, validation_files=validation_files, hf_dataset=hf_dataset, hf_config=hf_config,
            validation_fraction=validation_fraction, streaming=streaming, files_hint="text files, one document or sentence per line",
            counts={"batch_size": batch_size, "eval_batch_size": eval_batch_size, "num_proc": num_proc,
                    "max_train_samples": max_train_samples, "max_eval_samples": max_eval_samples},
        )
        check_unlabelled_arguments(unlabelled_file=unlabelled_file, labelled_examples=labelled_examples, streaming=streaming)
        if not 0 < mlm_probability < 1:
            raise ValueError(f"mlm_probability must be in (0, 1), got {mlm_probability}")
        if block_size < 3:
            raise ValueError(f"block_size must be at least 3 ([CLS] token [SEP]), got {block_size}")
        if streaming and masking_seed is not None:
            raise ValueError(
                "masking_seed keys masks by each block's index in the packed corpus, which a streamed corpus does not "
                "have; set streaming=False (pre-tokenised, map-style) or drop masking_seed."
            )
        self.tokenizer_name = tokenizer
        self.train_files, self.validation_files = train_files, validation_files
        self.hf_dataset, self.hf_config, self.text_column = hf_dataset, hf_config, text_column
        self.validation_fraction, self.block_size = validation_fraction, block_size
        self.mlm_probability, self.whole_word_mask = mlm_probability, whole_word_mask
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.num_proc, self.cache_dir, self.streaming = num_workers, num_proc, cache_dir, streaming
        self.max_train_samples, self.max_eval_samples, self.seed = max_train_samples, max_eval_samples, seed
        self.masking_seed = masking_seed
        self.unlabelled_file, self.labelled_examples = unlabelled_file, labelled_examples
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self.datasets: dict[str, Dataset | IterableDataset] = {}
        self._sharded = False

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The tokenizer, loaded on first use."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.tokenizer_name)
            if self.whole_word_mask:
                continuation_table(self._tokenizer)  # fail now, not in the first batch, if not WordPiece
        return self._tokenizer

    def build_metrics(self, prefix: str) -> MetricCollection:
        """Masked-token accuracy keyed ``<prefix>mlm_accuracy``; ``update(logits (B, N, V), labels)``."""
        return build_mlm_metrics(prefix)

    @property
    def fingerprint(self) -> dict[str, Any]:
        """What the training blocks are, as JSON values (the dataset part of a teacher cache's key).

        The readable settings that shape the blocks and their masks, plus ``datasets``' fingerprint
        of the packed training split (covering the corpus files' paths, sizes and modification
        times, or the HF dataset's fingerprint, the tokenizer, the hold-out and the subset).
        ``masking_seed`` is a key component of its own. Builds the blocks if that has not happened yet.

        Raises:
            ValueError: the corpus is streamed, so its blocks have no stable index.
        """
        train = self._cached_training_split()
        return {
            "data_module": type(self).__name__,
            "block_size": self.block_size,
            "validation_fraction": self.validation_fraction,
            "mlm_probability": self.mlm_probability,
            "whole_word_mask": self.whole_word_mask,
            "max_train_samples": self.max_train_samples,
            "seed": self.seed,
            "train_blocks": len(train),
            "datasets_fingerprint": train._fingerprint,
            # Only when set, so caches of runs without unlabelled data keep their keys.
            **({"labelled_examples": self.labelled_examples} if self.labelled_examples is not None else {}),
            **({"unlabelled_file": self.unlabelled_file} if self.unlabelled_file is not None else {}),
        }

    # ----------------------------------------------------------------------------- splits
    def _build(self) -> None:
        if self.datasets:
            return
        raw = self._raw_splits()
        for split, corpus in raw.items():
            empty = (f"the {split} corpus is shorter than one block of {self.block_size} tokens; "
                     "add text, lower block_size, or raise validation_fraction")
            self.datasets[split] = self._limited_split(self._pack(corpus), split, empty)

    def _with_unlabelled(self, blocks: Dataset) -> Dataset:
        """The training blocks followed by ``unlabelled_file``'s, packed on their own; sets ``training_counts``."""
        extra = None
        if self.unlabelled_file is not None:
            extra = self._pack(load_unlabelled_file(self.unlabelled_file, [self.text_column], "text_column", self.cache_dir))
        blocks, self.training_counts = with_unlabelled_rows(
            blocks, extra, labelled_examples=self.labelled_examples, unit="blocks", unlabelled_file=self.unlabelled_file)
        rank_zero_info(self.training_counts.line("masked-LM"))
        return blocks

    def _raw_splits(self) -> dict[str, Corpus]:
        if self.hf_dataset:
            raw = load_hf_corpus(self.hf_dataset, self.hf_config, self.cache_dir, self.streaming)
        else:
            raw = load_files(self.train_files, self.validation_files, self.cache_dir, self.streaming)
        for name, split in raw.items():
            columns = split.column_names
            if columns is not None and self.text_column not in columns:
                raise ValueError(f"the corpus has no column {self.text_column!r}; it has {columns}. Set text_column=.")
            # Only the text travels on: less to hash and filter, and packing knows which column to drop.
            raw[name] = split.select_columns([self.text_column])
        if "validation" not in raw:
            raw["train"], raw["validation"] = split_off_validation(
                raw["train"], self.text_column, self.validation_fraction, self.seed
            )
        return raw

    def _pack(self, corpus: Corpus) -> Corpus:
        pack = TokenizeAndPack(self.tokenizer, self.text_column, self.block_size)
        if isinstance(corpus, IterableDataset):
            return corpus.map(pack, batched=True, remove_columns=[self.text_column], features=_BLOCK_FEATURES)
        return corpus.map(
            pack,
            batched=True,
            remove_columns=[self.text_column],
            features=_BLOCK_FEATURES,
            num_proc=self.num_proc,
            desc=f"Tokenizing and packing into {self.block_size}-token blocks",
        )

    # ----------------------------------------------------------------------------- loaders
    def train_dataloader(self) -> DataLoader:
        """Shuffled training blocks, masked per batch.

        Map-style corpora are shuffled in an order fixed by (seed, epoch) and resume mid-epoch
        exactly (see :mod:`lightning_kd.data.sampling`); streamed ones use the shuffle buffer.
        """
        return self._loader("train", self.batch_size, MaskingCollator(
            self.tokenizer, self.mlm_probability, self.whole_word_mask, masking_seed=self.masking_seed
        ))

    def val_dataloader(self) -> DataLoader:
        """Validation blocks in order, with masks that repeat every epoch."""
        return self._loader("validation", self.eval_batch_size, MaskingCollator(
            self.tokenizer, self.mlm_probability, self.whole_word_mask, eval_seed=self.seed
        ))

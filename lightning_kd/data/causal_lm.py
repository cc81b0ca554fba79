"""``CausalLMDataModule``: next-token (causal LM) distillation data, packed plain text or prompt/response examples."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import datasets
from datasets import Dataset, Features, IterableDataset, List, Value
from pytorch_lightning import LightningDataModule
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader
from torchmetrics import MetricCollection
from transformers import PreTrainedTokenizerBase

from lightning_kd.cross_tokenizer.teacher_tokenizers import TeacherTokenizer, TeacherTokenizers
from lightning_kd.data.chitchat import CHITCHAT, write_chitchat_splits
from lightning_kd.data.corpus import Corpus, load_files, load_hf_corpus, split_off_validation
from lightning_kd.data.lm_examples import (
    DOCUMENT_STARTS,
    CausalLMCollator,
    PackDocuments,
    TokenizeExamples,
    template_adds_bos,
)
from lightning_kd.data.split_loading import CorpusSplits, check_corpus_arguments
from lightning_kd.data.sources import load_tokenizer, locate_embedded
from lightning_kd.data.teacher_blocks import (
    PackWithTeachers,
    TeacherEncoder,
    block_features,
    require_fast,
    teacher_encoder,
)
from lightning_kd.data.unlabelled_corpus import check_unlabelled_arguments, load_unlabelled_file, with_unlabelled_rows
from lightning_kd.metrics import build_lm_metrics
from lightning_kd.metrics.token_bytes import token_byte_lengths

# int32 ids halve the cached corpus on disk versus the int64 that ``map`` would infer.
_BLOCK_FEATURES = Features({"input_ids": List(Value("int32"))})
_SEPARATE_BLOCK_FEATURES = Features({"input_ids": List(Value("int32")), DOCUMENT_STARTS: List(Value("int32"))})
_EXAMPLE_FEATURES = Features({"input_ids": List(Value("int32")), "labels": List(Value("int32"))})


class CausalLMDataModule(CorpusSplits, LightningDataModule):
    """Next-token prediction batches for causal-LM distillation: packed plain text or prompt/response examples.

    **Plain text** (the default; ``text_column`` of ``train_files`` or ``hf_dataset``, one document
    per line/row): each non-blank document is tokenised without special tokens, followed by EOS
    (and preceded by BOS when ``add_bos``), the documents are concatenated and cut into blocks of
    exactly ``block_size`` tokens (the tail of each 1,000-document ``map`` batch is dropped), and
    cached as memory-mapped Arrow by ``datasets`` (``cache_dir``, ``num_proc``); or read, tokenised
    and packed on the fly with ``streaming=True``. Every token is a target (``labels == input_ids``).
    With ``separate_documents=True`` a token attends only to its own document: batches carry
    ``position_ids`` that restart at 0 at each document start and no ``attention_mask`` (transformers
    builds a block-diagonal causal mask from packed position ids; the model must run without a KV
    cache, ``use_cache=False``, for that), and each document's first token has label -100.

    **Prompt/response examples** (``prompt_field`` + ``response_field``, or ``messages_field`` with
    chat messages ``[{"role", "content"}, ...]``): each row is one example, rendered with the
    tokenizer's chat template when it has one (a pair becomes a user and an assistant message),
    else ``[BOS] prompt response [EOS]`` (texts concatenated as they are; put a separator in the
    prompt). Only response (assistant) tokens are targets; prompt, system and user tokens and
    padding have label -100. Examples longer than ``block_size`` keep their first ``block_size``
    tokens (cut from the right); one left without a response token is dropped and counted in a printed
    note (``overlong_examples="error"`` refuses it, naming it). Batches are padded
    on the right, per batch, with the pad token (EOS when the tokenizer has none).
    ``train_files: [embedded:chitchat]`` selects the embedded Chit-Chat conversations as
    ``prompt``/``response`` pairs of consecutive turns (see :mod:`lightning_kd.data.chitchat`),
    whose validation conversations are split off by conversation.

    Batches (Hugging Face's causal-LM convention): ``input_ids`` (B, N) int64; ``attention_mask``
    (B, N) (not with ``separate_documents``); ``position_ids`` (B, N) (only with it); ``labels``
    (B, N) **unshifted** (``labels[t]`` is the token at ``t``, the model at ``t`` predicts
    ``labels[t + 1]``; the shift happens in the loss) with -100 where nothing is predicted; and, in
    map-style training batches, ``example_index`` (B,) int64, each row's index in the training split.

    **Teachers with another tokenizer** (``teacher_tokenizer``, packed plain text only): every block
    also carries each such teacher's own encoding of exactly the text its student tokens spell, with
    the teacher's EOS (and BOS, when its template adds one) where the student's document boundaries
    fall (:mod:`lightning_kd.data.teacher_blocks`). Batches then add ``offset_mapping`` (B, N, 2) and,
    per teacher prefix (``teacher_``, or ``teacher{i}_`` with a list), ``<prefix>input_ids`` (B, Nt)
    right-padded with that teacher's pad id (EOS without one), ``<prefix>attention_mask`` and
    ``<prefix>offset_mapping`` (B, Nt, 2). Offsets are ``[start, end)`` character spans into the block's
    text (its document pieces laid end to end), special tokens and padding ``(0, 0)``: equal end
    offsets mean both models have read the same text. The student's rows are unchanged. Both
    tokenizers must be fast (Rust ``tokenizers``), for the offsets.

    Training order is fixed by (seed, epoch) and resumes mid-epoch exactly (see
    :mod:`lightning_kd.data.sampling`); streamed corpora use a 10,000-row shuffle buffer.

    **Unlabelled transfer data** (``unlabelled_file``, ``labelled_examples``; see ``docs/unlabelled_data.md``
    and :mod:`lightning_kd.data.unlabelled_corpus`): the file's documents are packed into blocks of their own
    (or its examples tokenised as the training examples are), placed after the training split's rows, and
    ``labelled_examples=N`` keeps the hard term of the first ``N`` rows of the seeded shuffle ``max_train_samples``
    uses. Training batches then also carry ``labelled`` (bool ``(B,)``): the student's own next-token loss
    reads only the rows marked ``True`` (0 for a batch without any), while every teacher term reads every
    row's scored positions. Labelled and unlabelled rows are shuffled together: an epoch is all of them, and a
    batch's labelled share is the split's on average.

    Args:
        tokenizer: model name, local directory or ``embedded:<name>`` of the tokenizer.
        train_files: data files (``.txt`` one document per line, ``.csv``/``.tsv``/``.jsonl``/``.parquet``;
            compressed or glob patterns allowed; ``embedded:`` names, e.g. ``embedded:chitchat``).
        validation_files: held-out files of the same type (default: ``validation_fraction`` of the training rows).
        test_files: files for ``test`` (default: the validation data).
        hf_dataset: Hugging Face dataset name, or a ``save_to_disk`` directory (instead of ``train_files``).
        hf_config: configuration of ``hf_dataset``.
        text_column: the column holding the documents in plain-text mode (``text`` for ``.txt`` files).
        prompt_field: the prompt column of prompt/response examples (with ``response_field``).
        response_field: the response column of prompt/response examples.
        messages_field: the column of chat messages (instead of ``prompt_field``/``response_field``).
        validation_fraction: share of training rows (documents or examples) held out when there is no validation data.
        test_fraction: share of the remaining training rows held out as the test split when there are no
            ``test_files`` (default 0: ``test`` reads the validation data). A separate test split lets a
            recipe be chosen on validation and reported once on test.
        block_size: tokens per plain-text block; the most tokens an example keeps.
        overlong_examples: an example whose response starts after ``block_size`` tokens is
            ``"drop"``-ped (default; the count is printed) or an ``"error"`` naming it.
        separate_documents: plain text only: documents packed in one block do not attend to each other.
        add_bos: precede each document (and each template-less example) with BOS. ``None`` (default):
            when the tokenizer's own template does (Llama/Gemma yes, GPT-2/Qwen no).
        batch_size: training batch size.
        eval_batch_size: validation/test batch size (default ``batch_size``).
        num_workers: DataLoader worker processes.
        num_proc: processes for tokenising (not with ``streaming``).
        cache_dir: directory of the ``datasets`` cache (and of the converted ``embedded:chitchat`` files).
        streaming: read the data lazily instead of pre-tokenising it (for corpora too big to cache).
        max_train_samples: use this many training rows (blocks or examples; a seeded random subset,
            the first ones when streaming).
        max_eval_samples: use this many validation (and test) rows.
        seed: seed of the validation hold-out, the subsets and the shuffles.
        teacher_tokenizer: the tokenizer of a teacher of another family, one for every teacher or one
            entry per teacher (``null`` for a teacher that reads the student's tokens); a name equal to
            ``tokenizer`` changes nothing. Packed plain text only (not with prompt/response examples or
            ``separate_documents``); the CLI links it to the method. See :mod:`lightning_kd.cross_tokenizer`.
        unlabelled_file: a file of in-domain data without labels, in a form the training files take (documents
            in ``text_column``, or examples with the same fields), whose rows only the teacher terms learn from.
            Not with ``streaming``.
        labelled_examples: keep the student's own next-token loss on only this many training rows (the first of
            the seeded shuffle, after ``max_train_samples``); the teachers label the rest. Not with ``streaming``.

    Raises:
        ValueError: no corpus or two, fields that do not go together, an out-of-range number, or unlabelled
            rows with ``streaming``.
    """

    task_head: str = "causal_lm"
    num_labels: int | None = None

    def __init__(
        self,
        tokenizer: str,
        train_files: list[str] | None = None,
        validation_files: list[str] | None = None,
        test_files: list[str] | None = None,
        hf_dataset: str | None = None,
        hf_config: str | None = None,
        text_column: str = "text",
        prompt_field: str | None = None,
        response_field: str | None = None,
        messages_field: str | None = None,
        validation_fraction: float = 0.01,
        test_fraction: float = 0.0,
        block_size: int = 512,
        overlong_examples: Literal["drop", "error"] = "drop",
        separate_documents: bool = False,
        add_bos: bool | None = None,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        num_proc: int | None = None,
        cache_dir: str | None = None,
        streaming: bool = False,
        max_train_samples: int | None = None,
        max_eval_samples: int | None = None,
        seed: int = 42,
        teacher_tokenizer: TeacherTokenizer = None,
        unlabelled_file: str | None = None,
        labelled_examples: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_corpus_arguments(
            train_files=train_files, validation_files=validation_files, hf_dataset=hf_dataset, hf_config=hf_config,
            validation_fraction=validation_fraction, streaming=streaming,
            files_hint="text one document per line, or JSONL/CSV with the fields below",
            counts={"batch_size": batch_size, "eval_batch_size": eval_batch_size, "num_proc": num_proc,
                    "max_train_samples": max_train_samples, "max_eval_samples": max_eval_samples},
        )
        check_unlabelled_arguments(unlabelled_file=unlabelled_file, labelled_examples=labelled_examples, streaming=streaming)
        chitchat = CHITCHAT in (train_files or [])
        if chitchat and not (prompt_field or response_field or messages_field):
            prompt_field, response_field = "prompt", "response"  # the converted corpus's columns
        if bool(prompt_field) != bool(response_field):
            raise ValueError(
                f"prompt_field and response_field go together (got prompt_field={prompt_field!r}, "
                f"response_field={response_field!r}); for chat messages set messages_field instead."
            )
        if messages_field and prompt_field:
            raise ValueError("Set messages_field (chat messages) or prompt_field/response_field (pairs), not both.")
        examples = bool(messages_field or prompt_field)
        if examples and separate_documents:
            raise ValueError(
                "separate_documents applies to packed plain text; prompt/response examples are one per row already."
            )
        if chitchat and len(train_files) > 1 and not validation_files:
            raise ValueError(
                f"{CHITCHAT} is split into training and validation by conversation; mixed with other train_files, "
                "pass validation_files too (a row-level hold-out would put one conversation on both sides)."
            )
        if not 0 <= test_fraction < 1:
            raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
        if test_fraction and test_files:
            raise ValueError("test_fraction holds out a test split from the training rows; test_files give one: drop one.")
        if block_size < 2:
            raise ValueError(f"block_size must be at least 2 (a token and the one it predicts), got {block_size}")
        self.teacher_tokenizers = TeacherTokenizers.of(teacher_tokenizer, tokenizer)
        if self.teacher_tokenizers and examples:
            raise ValueError(
                "teacher_tokenizer works for packed plain text (text_column); prompt/response and chat examples "
                "across tokenizers need each tokenizer's own chat template and are not done yet. Give plain text, "
                "or drop teacher_tokenizer."
            )
        if self.teacher_tokenizers and separate_documents:
            raise ValueError(
                "teacher_tokenizer works for packed plain text without separate_documents (the teacher's encoding "
                "has no per-document positions yet); drop one of them."
            )
        self.tokenizer_name = tokenizer
        self.train_files, self.validation_files, self.test_files = train_files, validation_files, test_files
        self.hf_dataset, self.hf_config, self.text_column = hf_dataset, hf_config, text_column
        self.prompt_field, self.response_field, self.messages_field = prompt_field, response_field, messages_field
        self.examples = examples
        self.validation_fraction, self.test_fraction, self.block_size = validation_fraction, test_fraction, block_size
        self.separate_documents, self.add_bos = separate_documents, add_bos
        if overlong_examples not in ("drop", "error"):
            raise ValueError(f"overlong_examples must be 'drop' or 'error', got {overlong_examples!r}")
        self.overlong_examples = overlong_examples
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.num_proc, self.cache_dir, self.streaming = num_workers, num_proc, cache_dir, streaming
        self.max_train_samples, self.max_eval_samples, self.seed = max_train_samples, max_eval_samples, seed
        self.unlabelled_file, self.labelled_examples = unlabelled_file, labelled_examples
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._token_bytes: Tensor | None = None  # bytes of text per token id, for bits per byte
        self._bos_id: int | None = None
        self._teachers: list[TeacherEncoder] | None = None
        self.datasets: dict[str, Dataset | IterableDataset] = {}
        self._sharded = False

    @property
    def has_prompts(self) -> bool:
        """Whether rows are prompt/response examples (whose prompts a model can continue: on-policy and
        sequence-level KD), not packed plain text."""
        return self.examples

    @property
    def max_length(self) -> int:
        """The longest row, ``block_size`` (what the memory estimate reads)."""
        return self.block_size

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The tokenizer, loaded (and checked) on first use.

        Raises:
            ValueError: it has neither an EOS nor a pad token, or no EOS where documents/responses need one.
        """
        if self._tokenizer is None:
            tokenizer = load_tokenizer(self.tokenizer_name)
            if tokenizer.eos_token_id is None and tokenizer.pad_token_id is None:
                raise ValueError(
                    f"the tokenizer {self.tokenizer_name!r} has neither an EOS nor a pad token, so batches cannot be "
                    "padded nor documents ended; use a causal-LM tokenizer (one with an EOS token)"
                )
            if tokenizer.eos_token_id is None and not (self.examples and getattr(tokenizer, "chat_template", None)):
                what = "each document" if not self.examples else "each response (there is no chat template)"
                raise ValueError(
                    f"the tokenizer {self.tokenizer_name!r} has no EOS token to end {what}; use a causal-LM "
                    "tokenizer (one with an EOS token), or one with a chat template for prompt/response data"
                )
            add_bos = template_adds_bos(tokenizer) if self.add_bos is None else self.add_bos
            if add_bos and tokenizer.bos_token_id is None:
                raise ValueError(f"add_bos=True, but the tokenizer {self.tokenizer_name!r} has no BOS token")
            self._bos_id = tokenizer.bos_token_id if add_bos else None
            self._tokenizer = tokenizer
        return self._tokenizer

    @property
    def teacher_encodings(self) -> TeacherTokenizer:
        """The teachers' own tokenizers, normalised (``None`` when every teacher reads the student's tokens):
        the CLI links it to the method's ``teacher_tokenizer``."""
        return self.teacher_tokenizers.argument

    def _teacher_encoders(self) -> list[TeacherEncoder]:
        """Each teacher encoding's prefix, tokenizer and special ids, loaded and checked once (both sides fast).

        Raises:
            ValueError: a slow tokenizer (no offsets), or a teacher tokenizer without EOS.
        """
        if self._teachers is None:
            if self.teacher_tokenizers:
                require_fast(self.tokenizer, self.tokenizer_name, "student")
            self._teachers = [teacher_encoder(prefix, tokenizer, name) for prefix, name, tokenizer in self.teacher_tokenizers.load()]
        return self._teachers

    @property
    def pad_token_id(self) -> int:
        """The id that pads example batches: the pad token, else EOS."""
        tokenizer = self.tokenizer
        return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def build_metrics(self, prefix: str) -> MetricCollection:
        """Next-token metrics keyed ``<prefix>...`` (:func:`lightning_kd.metrics.build_lm_metrics`).

        The causal-LM stage updates them with the logits and the labels it has shifted to match them.
        Bits per byte count the bytes of text the tokenizer's tokens spell (:mod:`lightning_kd.metrics.token_bytes`).
        """
        if self._token_bytes is None:
            self._token_bytes = token_byte_lengths(self.tokenizer)
        return build_lm_metrics(prefix, self._token_bytes)

    @property
    def fingerprint(self) -> dict[str, Any]:
        """What the training rows are, as JSON values (the dataset part of a teacher cache's key).

        The readable settings that shape the rows plus ``datasets``' fingerprint of the tokenised
        training split (covering the files' paths, sizes and modification times or the HF dataset's
        fingerprint, the tokenizer, the hold-out and the subset). Builds the rows if needed.

        Raises:
            ValueError: the corpus is streamed, so its rows have no stable index.
        """
        train = self._cached_training_split()
        return {
            "data_module": type(self).__name__,
            "mode": "examples" if self.examples else "text",
            "block_size": self.block_size,
            "separate_documents": self.separate_documents,
            "overlong_examples": self.overlong_examples,
            "bos": self._bos_id is not None,
            "validation_fraction": self.validation_fraction,
            "test_fraction": self.test_fraction,
            "max_train_samples": self.max_train_samples,
            "seed": self.seed,
            "train_rows": len(train),
            "datasets_fingerprint": train._fingerprint,
            # Only when set, so caches of same-tokenizer runs (and of runs without unlabelled data) keep their keys.
            **({"teacher_tokenizer": self.teacher_encodings} if self.teacher_tokenizers else {}),
            **({"labelled_examples": self.labelled_examples} if self.labelled_examples is not None else {}),
            **({"unlabelled_file": self.unlabelled_file} if self.unlabelled_file is not None else {}),
        }

    # ----------------------------------------------------------------------------- splits
    def _build(self) -> None:
        if self.datasets:
            return
        _ = self.tokenizer  # load and check it before reading any data
        for split, raw in self._raw_splits().items():
            empty = (f"the {split} data has no examples; add rows or raise validation_fraction" if self.examples else
                     f"the {split} data is shorter than one block of {self.block_size} tokens; add text, lower "
                     "block_size, or raise validation_fraction")
            self.datasets[split] = self._limited_split(self._tokenize(raw, split), split, empty)

    def _with_unlabelled(self, rows: Dataset) -> Dataset:
        """The training rows followed by ``unlabelled_file``'s, tokenised (packed) on their own; sets ``training_counts``."""
        extra = None
        if self.unlabelled_file is not None:
            setting = "text_column" if not self.examples else (
                "messages_field" if self.messages_field else "prompt_field/response_field")
            raw = load_unlabelled_file(self.unlabelled_file, self._columns(), setting, self.cache_dir)
            extra = self._tokenize(raw, "unlabelled")
        unit = "examples" if self.examples else "blocks"
        rows, self.training_counts = with_unlabelled_rows(
            rows, extra, labelled_examples=self.labelled_examples, unit=unit, unlabelled_file=self.unlabelled_file)
        rank_zero_info(self.training_counts.line("causal-LM"))
        return rows

    def _columns(self) -> list[str]:
        if self.messages_field:
            return [self.messages_field]
        if self.prompt_field:
            return [self.prompt_field, self.response_field]
        return [self.text_column]

    def _raw_splits(self) -> dict[str, Corpus]:
        if self.hf_dataset:
            raw = load_hf_corpus(self.hf_dataset, self.hf_config, self.cache_dir, self.streaming)
        else:
            train_files, validation_files = self._expand(self.train_files, "train"), self.validation_files
            if validation_files:
                validation_files = self._expand(validation_files, "validation")
            elif self.train_files == [CHITCHAT]:
                validation_files = self._expand(self.train_files, "validation")
            raw = load_files(train_files, validation_files, self.cache_dir, self.streaming)
        if self.test_files:
            raw["test"] = load_files(self._expand(self.test_files, "validation"), None, self.cache_dir,
                                     self.streaming)["train"]
        columns = self._columns()
        for name, split in raw.items():
            present = split.column_names
            missing = [column for column in columns if present is not None and column not in present]
            if missing:
                setting = "text_column" if not self.examples else (
                    "messages_field" if self.messages_field else "prompt_field/response_field")
                raise ValueError(f"the {name} data has no column {missing[0]!r}; it has {present}. Set {setting}=.")
            raw[name] = split.select_columns(columns)  # only what is tokenised travels on
        if "validation" not in raw:
            raw["train"], raw["validation"] = split_off_validation(
                raw["train"], columns[0], self.validation_fraction, self.seed
            )
        if self.test_fraction:
            raw["train"], raw["test"] = split_off_validation(raw["train"], columns[0], self.test_fraction, self.seed + 1)
        return raw

    def _expand(self, files: list[str], split: str) -> list[str]:
        """Replace ``embedded:chitchat`` by its converted ``split`` JSONL file."""
        if CHITCHAT not in files:
            return files
        cache = Path(self.cache_dir or datasets.config.HF_DATASETS_CACHE) / "lightning_kd"
        converted = write_chitchat_splits(locate_embedded(CHITCHAT), cache, self.validation_fraction, self.seed)
        return [str(converted[split]) if entry == CHITCHAT else entry for entry in files]

    def _tokenize(self, raw: Corpus, split: str) -> Corpus:
        tokenizer = self.tokenizer
        columns = self._columns()
        if self.examples:
            function: Any = TokenizeExamples(
                tokenizer, self.block_size, self.prompt_field, self.response_field, self.messages_field,
                eos_id=tokenizer.eos_token_id, bos_id=self._bos_id, split=split,
                drop_overlong=self.overlong_examples == "drop",
            )
            options: dict[str, Any] = dict(with_indices=True, features=_EXAMPLE_FEATURES)
            desc = "Tokenizing examples"
        elif self.teacher_tokenizers:
            # The teachers' tokenizers live in the function, so datasets' cache key changes with them.
            teachers = self._teacher_encoders()
            function = PackWithTeachers(tokenizer, self.text_column, self.block_size, tokenizer.eos_token_id,
                                        self._bos_id, teachers)
            options = dict(features=block_features(teachers))
            desc = f"Tokenizing and packing into {self.block_size}-token blocks, with the teachers' encodings"
        else:
            function = PackDocuments(tokenizer, self.text_column, self.block_size, tokenizer.eos_token_id,
                                     self._bos_id, document_starts=self.separate_documents)
            options = dict(features=_SEPARATE_BLOCK_FEATURES if self.separate_documents else _BLOCK_FEATURES)
            desc = f"Tokenizing and packing into {self.block_size}-token blocks"
        if isinstance(raw, IterableDataset):
            return raw.map(function, batched=True, remove_columns=columns, **options)
        rows = raw.map(function, batched=True, remove_columns=columns, num_proc=self.num_proc, desc=desc, **options)
        if self.examples and len(rows) < len(raw):
            rank_zero_info(
                f"CausalLMDataModule: dropped {len(raw) - len(rows)} of {len(raw)} {split} examples whose response starts "
                f"after block_size={self.block_size} tokens (raise block_size to keep them)."
            )
        return rows

    # ----------------------------------------------------------------------------- loaders
    def _collator(self) -> CausalLMCollator:
        pad_ids = {teacher.prefix: teacher.pad_id for teacher in self._teacher_encoders()}
        return CausalLMCollator(self.pad_token_id, self.separate_documents, pad_ids)

    def train_dataloader(self) -> DataLoader:
        """Shuffled training rows; map-style ones in an order fixed by (seed, epoch), resumable mid-epoch."""
        return self._loader("train", self.batch_size, self._collator())

    def val_dataloader(self) -> DataLoader:
        """Validation rows in order."""
        return self._loader("validation", self.eval_batch_size, self._collator())

    def test_dataloader(self) -> DataLoader:
        """The test rows (``test_files`` or the ``test_fraction`` hold-out) in order, else the validation rows."""
        split = "test" if "test" in self.datasets or self.test_files or self.test_fraction else "validation"
        return self._loader(split, self.eval_batch_size, self._collator())

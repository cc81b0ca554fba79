"""``TeacherCache``: serve a teacher's outputs from disk instead of running it (offline distillation).

A method built with ``teacher_cache=TeacherCache(path=...)`` asks the cache for teacher features
(:meth:`DistillationModule.run_teacher`). A batch whose rows are all cached is read from
memory-mapped shards and the teacher does not run; otherwise the teacher runs on the batch and
the rows the cache lacks are appended. Rows are committed at every epoch end, whenever Lightning
saves a checkpoint and when training ends, so later epochs and later runs read them. See
``docs/teacher_cache.md`` for what is stored, the key, the sample check and the storage size.
"""

from __future__ import annotations

import logging
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pytorch_lightning import Callback
from torch import Tensor

from lightning_kd.cache.compatibility import check_data, check_method, example_indices
from lightning_kd.cache.fingerprint import (
    config_digest,
    covers,
    describe_request,
    precision_of,
    request_from_description,
    tokenizer_digest,
    weights_digest,
)
from lightning_kd.cache.layout import RecordLayout, StorageDtype
from lightning_kd.cache.manifest import (
    CACHE_FORMAT_VERSION,
    check_key,
    read_manifest,
    write_manifest,
)
from lightning_kd.cache.shards import Shards
from lightning_kd.cache.verify import check_sample
from lightning_kd.core.features import Features

log = logging.getLogger(__name__)

_DTYPES = ("float16", "bfloat16", "float32")


class TeacherCache:
    """Teacher-output cache: each training example's teacher features, computed once and reused.

    Stored per example (real tokens only): the logits (sequence-level in full; vocabulary-level
    as the ``top_k`` largest values and their ids, at the logit rows the method reads, e.g. the
    masked positions), and the hidden states and Q/K/V the method's teacher request asks for. The cache directory is keyed by the teacher (config and weights),
    the tokenizer, the training data, the masking seed, the teacher's precision, the stored request
    and these settings; a directory filled under another key is refused (delete it, or point
    ``path`` elsewhere), and every read checks that the cached input ids equal the batch's. Several
    teachers get one sub-directory each (``teacher0/``, ``teacher1/``, ...).

    The teacher stays loaded: rows the cache lacks are computed live, and the first batches of every
    run are checked against the live teacher (``verify_batches``).

    Args:
        path: cache directory, shared by every run that should reuse it (default:
            ``<trainer.default_root_dir>/teacher_cache``).
        top_k: vocabulary-level logits kept per stored row. Causal LMs (methods whose teacher logits only
            the prediction loss reads): the ``top_k`` largest log-probabilities at the soft term's
            temperature, their ids and the remaining mass as one tail bucket, which every divergence
            reads over ``top_k + 1`` outcomes (exact when the tail is empty, else a lower bound; see
            ``docs/teacher_cache.md``). Otherwise (MLM): the ``top_k`` largest logits, rebuilt as a
            renormalised top-k distribution (every other logit set to -1e9). ``None`` stores all
            ``V`` logits (exact, but ``4·V`` bytes per row). Only the rows the method's losses read are
            stored (with compact heads, e.g. the masked positions for KD). Sequence-level logits are
            always stored in full.
        dtype: storage dtype of hidden states and Q/K/V: ``float16`` (default: half the bytes of
            float32, ~3 significant digits, values up to 65504), ``bfloat16`` (float32's range, ~2
            digits) or ``float32`` (exact). Logits are always float32.
        verify_batches: how many batches per run and teacher are also run live and checked: the
            method's loss terms from cached and live features must agree (0 turns the check off).

    Raises:
        ValueError: an invalid ``top_k``, ``dtype`` or ``verify_batches``.
    """

    def __init__(self, path: str | None = None, top_k: int | None = 64, dtype: StorageDtype = "float16",
                 verify_batches: int = 1) -> None:
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1 (logits kept per token) or null (all of them), got {top_k}.")
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}.")
        if verify_batches < 0:
            raise ValueError(f"verify_batches must be >= 0 (0 turns the sample check off), got {verify_batches}.")
        self.path, self.top_k, self.dtype, self.verify_batches = path, top_k, dtype, verify_batches
        self._reset()

    def _reset(self) -> None:
        self._root: Path | None = None
        self._rank = 0
        self._data_key: dict[str, Any] | None = None
        self._stores: dict[int, _TeacherStore] = {}
        # Fingerprints are computed once per teacher object (weakly keyed: the cache may outlive a method).
        self._teacher_keys: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._hooks = _CacheHooks(self)

    def __getstate__(self) -> dict[str, Any]:
        # Only the settings travel (ddp_spawn, deepcopy): open files and maps are per process.
        return {"path": self.path, "top_k": self.top_k, "dtype": self.dtype, "verify_batches": self.verify_batches}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def __repr__(self) -> str:
        return f"TeacherCache(path={self.path!r}, top_k={self.top_k}, dtype={self.dtype!r}, verify_batches={self.verify_batches})"

    # ------------------------------------------------------------------ binding
    def check_module(self, module: Any) -> None:
        """Refuse a method or knob with which a cache cannot be right (called when the method is built)."""
        check_method(module)

    def open(self, module: Any, data: Any, *, rank: int = 0, default_root: str | Path | None = None) -> None:
        """Bind the cache to the training data its rows come from (done automatically inside ``Trainer.fit``).

        Args:
            module: the method (a :class:`~lightning_kd.core.module.DistillationModule`).
            data: the data module: provides ``fingerprint`` and ``tokenizer`` (and ``masking_seed``
                when it masks tokens), and batches carrying ``example_index``.
            rank: this process's rank (its rows go to ``rank<rank>/``).
            default_root: directory under which ``teacher_cache/`` is used when ``path`` is not set.

        Raises:
            ValueError: the method, the data or the missing ``path`` make a cache impossible.
            StaleCacheError: raised later, per teacher, when an existing cache was filled under another key.
        """
        check_method(module)
        check_data(data)
        if self.path is None and default_root is None:
            raise ValueError("TeacherCache(path=None) outside a Trainer has no default directory; give path=.")
        self.close()
        self._root = Path(self.path) if self.path is not None else Path(default_root) / "teacher_cache"
        self._rank = rank
        tokenizer = getattr(data, "tokenizer", None)
        self._data_key = {
            "dataset": data.fingerprint,
            "tokenizer": tokenizer_digest(tokenizer) if tokenizer is not None else None,
            "masking_seed": getattr(data, "masking_seed", None),
        }

    def bind(self, module: Any) -> None:
        """Bind to the data module of ``module``'s trainer (at fit start, through the method's callbacks)."""
        trainer = getattr(module, "_trainer", None)
        if trainer is None or trainer.datamodule is None:
            raise ValueError(
                "The teacher cache takes its data key from the trainer's data module: train with "
                "trainer.fit(method, datamodule=...) (the CLI does), or call cache.open(method, data_module) first."
            )
        self.open(module, trainer.datamodule, rank=trainer.global_rank, default_root=trainer.default_root_dir)
        if self._hooks not in trainer.callbacks:
            # Lightning iterates trainer.callbacks at every hook, so hooks from now on include the commits.
            trainer.callbacks.append(self._hooks)

    @property
    def callback(self) -> Callback:
        """The Lightning callback that binds and commits this cache."""
        return self._hooks

    @property
    def directory(self) -> Path | None:
        """The cache directory once bound (teacher ``i`` lives in ``teacher<i>/`` under it)."""
        return self._root

    # ------------------------------------------------------------------ the step
    def teacher_features(self, module: Any, index: int, batch: dict[str, Tensor]) -> Features:
        """Teacher ``index``'s float32 features on ``batch``, from the cache when it holds every row.

        Raises:
            ValueError: the batch has no ``example_index``, a cached row's input ids differ from the
                batch's, or the method now requests tensors the cache does not store.
            StaleCacheError: the cache directory was filled under another key.
            CacheMismatchError: the sample check failed.
        """
        trainer = getattr(module, "_trainer", None)
        if self._data_key is None or (trainer is not None and self._hooks not in trainer.callbacks):
            # First use in this run: bind to its data module and register the commit hooks.
            self.bind(module)
        store = self._stores.get(index)
        if store is None:
            store = self._stores[index] = self._open_store(module, index)
        return store.features(module, batch)

    def _open_store(self, module: Any, index: int) -> _TeacherStore:
        directory = self._root / f"teacher{index}"
        request = module.teacher_features_request(index)
        teacher = module.teachers[index]
        if teacher not in self._teacher_keys:
            self._teacher_keys[teacher] = {"teacher_config": config_digest(teacher), "teacher_weights": weights_digest(teacher),
                                           "teacher_precision": precision_of(teacher)}
        vocabulary_level = module.task_stage.token_level
        tail_temperature = module.cache_tail_temperature() if vocabulary_level and self.top_k is not None else None
        key = {
            "format_version": CACHE_FORMAT_VERSION,
            "teacher_index": index,
            **self._teacher_keys[teacher],
            **self._data_key,
            "request": describe_request(request),
            # Settings that change nothing stored are left out, so changing them does not void a cache.
            "top_k": self.top_k if vocabulary_level else None,
            "dtype": self.dtype if request.hidden_states or request.hooked_layers else None,
        }
        if tail_temperature is not None:  # the stored log-probabilities and tail hold at this T only
            key["tail_temperature"] = tail_temperature
        manifest = read_manifest(directory)
        if manifest is not None:
            check_key(manifest["key"], key, directory)
            layout = RecordLayout.from_description(manifest["layout"])
        else:
            probe = module.teacher_forward(index, _probe_batch(module.device, module.teacher_tokenizers.prefix_of(index)))
            layout = RecordLayout.from_features(probe, request, self.top_k, self.dtype, tail_temperature)
            write_manifest(directory, key, layout.describe())
        stored_request = request_from_description(key["request"])
        return _TeacherStore(index, Shards(directory, layout, self._rank), layout, stored_request, self.dtype, self.verify_batches)

    # ------------------------------------------------------------------ durability
    def commit(self) -> int:
        """Make every appended row durable and visible to other processes; returns how many were committed."""
        return sum(store.shards.commit() for store in self._stores.values())

    def refresh(self) -> None:
        """See rows other processes (ranks, concurrent runs) committed since the cache was opened."""
        for store in self._stores.values():
            store.shards.refresh()

    def close(self) -> None:
        """Commit and release the files; the next use binds again (to the next run's data)."""
        for store in self._stores.values():
            store.shards.close()
        self._stores.clear()
        self._data_key = None

    # ------------------------------------------------------------------ ahead of time
    def fill(self, module: Any, data: Any, max_batches: int | None = None) -> int:
        """Precompute the cache for every teacher of ``module`` over ``data``'s training batches.

        For a precompute pass before a sweep of runs that share ``path``; no Trainer is needed.

        Args:
            module: the method whose teachers and requests define what is stored.
            data: a data module (``prepare_data``/``setup``/``train_dataloader``, ``fingerprint``, ``tokenizer``).
            max_batches: stop after this many batches (default: the whole training split).

        Returns:
            How many rows were added (over all teachers).
        """
        if hasattr(data, "prepare_data"):
            data.prepare_data()
            data.setup("fit")
        self.open(module, data, default_root=Path.cwd())
        added = 0
        for number, batch in enumerate(data.train_dataloader()):
            if max_batches is not None and number >= max_batches:
                break
            batch = {k: v.to(module.device) if isinstance(v, Tensor) else v for k, v in batch.items()}
            batch = module.prepare_batch(batch)  # as the step reads it (a causal stage's shifted labels)
            for index in range(len(module.teachers)):
                store = self._stores.get(index)
                before = store.appended if store is not None else 0
                self.teacher_features(module, index, batch)
                added += self._stores[index].appended - before
        self.close()
        return added


class _TeacherStore:
    """One teacher's cache directory: lookups, the live fallback, appends and the sample check."""

    def __init__(self, index: int, shards: Shards, layout: RecordLayout, request, dtype: str, verify_batches: int) -> None:
        self.index, self.shards, self.layout, self.request = index, shards, layout, request
        self.dtype, self.verify_batches = dtype, verify_batches
        self.checked = 0
        self.appended = 0

    def features(self, module: Any, batch: dict[str, Tensor]) -> Features:
        # Rows are the teacher's own encoding (a teacher of another tokenizer reads its own keys); the sample
        # check also needs the student's batch, which the method's terms read.
        student_batch, batch = batch, module.teacher_inputs(batch, self.index)
        request = module.teacher_features_request(self.index)
        missing = covers(self.request, request)
        if missing:
            raise ValueError(
                f"Teacher {self.index} is now asked for {', '.join(missing)}, which the cache at {self.shards.directory} "
                "does not store (it stores what the method requested when the cache was created). Delete the directory "
                "or point the cache's path elsewhere."
            )
        examples = example_indices(batch).cpu().numpy().astype(np.int64)
        found, locations = self.shards.locate(examples)
        verify = self.checked < self.verify_batches
        if found.all():
            rows = self.shards.read(locations)
            self._check_inputs(rows, batch, examples, np.arange(len(examples)))
            cached = self.layout.decode(rows, batch, request, module.device)
            if verify:
                check_sample(module, self.index, student_batch, batch, module.teacher_forward(self.index, batch), cached,
                             self.layout, self.dtype)
                self.checked += 1
            return cached
        live = module.teacher_forward(self.index, batch)
        if found.any():
            self._check_inputs(self.shards.read(locations[found]), batch, examples, np.flatnonzero(found))
        rows = self.layout.encode(live, batch)
        # The step uses what the cache will hold, so a run trains the same whether its cache was warm or cold.
        cached = self.layout.decode(rows, batch, request, module.device)
        if verify:
            check_sample(module, self.index, student_batch, batch, live, cached, self.layout, self.dtype)
            self.checked += 1
        new = [int(row) for row in np.flatnonzero(~found) if examples[row] not in examples[:row]]
        self.shards.append(examples[new], rows.select(new))
        self.appended += len(new)
        return cached

    def _check_inputs(self, rows, batch: dict[str, Tensor], examples: np.ndarray, batch_rows: np.ndarray) -> None:
        selected = torch.as_tensor(batch_rows, device=batch["input_ids"].device)
        sub_batch = {"input_ids": batch["input_ids"][selected]}
        if "attention_mask" in batch:
            sub_batch["attention_mask"] = batch["attention_mask"][selected]
        row = self.layout.differing_row(rows, sub_batch)
        if row is not None:
            example = int(examples[batch_rows[row]])
            raise ValueError(
                f"cached inputs for example {example} differ from this batch: the data changed or masks are dynamic. "
                f"Delete the teacher cache at {self.shards.directory.parent} (or point its path elsewhere); for "
                "pretraining, set data.init_args.masking_seed so masks are static."
            )


class _CacheHooks(Callback):
    """Binds the cache at fit start and commits at the points Lightning makes a run durable (the method
    returns it from ``configure_callbacks``; the cache also registers it on first use outside the CLI)."""

    def __init__(self, cache: TeacherCache) -> None:
        self.cache = cache

    def on_fit_start(self, trainer, pl_module) -> None:
        self.cache.bind(pl_module)  # data and method refusals come before any validation or training

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.cache.commit()
        trainer.strategy.barrier("teacher_cache_commit")  # every rank's rows are committed before anyone re-reads
        self.cache.refresh()

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        self.cache.commit()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.cache.commit()  # appended rows are complete records; keep them

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            self.cache.close()


def _probe_batch(device: torch.device, prefix: str | None = None) -> dict[str, Tensor]:
    """A one-row, two-token batch: its features tell the stored shapes without reading any data (under the
    teacher's own prefix too, for a teacher that reads its own tokenizer's encoding)."""
    ids = torch.zeros((1, 2), dtype=torch.long, device=device)
    probe = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    return probe | ({prefix + key: value for key, value in probe.items()} if prefix is not None else {})

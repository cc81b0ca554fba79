"""VocabDistil — GLMD with vocabulary compression (the paper's GLMD+vc). Tan et al. (2023), "Are
Intermediate Layers and Labels Really Necessary? A General Language Model Distillation Method"
(Findings of ACL 2023).

:class:`~lightning_kd.methods.LogitsDistil` for a student whose word-embedding table keeps only
``M`` rows (``compressed_size`` of the tokenizer, rounded up to a multiple of 128). Which tokens
keep a row and which row the others read is a :class:`~lightning_kd.models.vocab_map.VocabularyMap`,
built once from corpus token counts when the first VocabDistil run starts and then carried along:
in checkpoints (buffers ``vocab_map.*``) and beside every exported student (``vocab_map.json``).

How the pieces fit:

* batches hold the teacher's token ids; the student reads ``student_row[id]`` (MLM labels likewise);
* the student stays an ordinary HF model whose vocabulary *is* its ``M`` rows, so its logits are
  ``M`` wide (the reference's ``unmap_vocab_output``). ``columns="kept"`` (GKD
  ``--distill_logit_mask_map``, default) compares them with the teacher's logits at the kept ids;
  ``columns="all"`` spreads them back to all ``V`` ids (dropped ids repeat their row's logit) and
  compares every teacher column;
* the export ships the ``M``-row model, ``vocab_map.json`` and the teacher's tokenizer rewritten so
  it emits student rows directly (see ``docs/methods/vocab_distil.md``).

Where we differ from the GKD reference:

* The map is built at the start of any VocabDistil run whose student has none (from the training
  data, or ``token_counts``), not only in pre-training under ``--student_build_map_vocab``; a
  student exported by VocabDistil brings its own map, which is then never rebuilt.
* The student's hard loss (if any) is over its ``M`` rows with labels mapped through the map, as
  the exported model computes it; the reference's default scores ``V`` duplicated columns.
* The factorised word embedding of the README's examples (``--compress_word_emb``) is out of scope.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Literal

import torch
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor

from lightning_kd.core.export import atomic_replace_directory, load_tokenizer
from lightning_kd.losses.vocabulary import top_n_count
from lightning_kd.methods.logits_distil import LogitsDistil
from lightning_kd.models.vocab_map import (
    MAP_FILE,
    Similarity,
    VocabularyMap,
    compress_model_vocabulary,
    compressed_vocab_size,
    count_token_ids,
    map_file,
    pinned_token_ids,
    protected_token_ids,
    read_map_file,
    remap_tokenizer_files,
)

Columns = Literal["kept", "all"]
TeacherInputs = Literal["original", "replaced"]


class VocabDistil(LogitsDistil):
    """LogitsDistil into a student with a compressed vocabulary (GLMD+vc).

    Args:
        compressed_size: the student's vocabulary: a fraction in ``(0, 1)`` of the tokenizer's size,
            or a row count; rounded up to a multiple of ``size_multiple`` (GKD ``--map_vocab_size``).
        size_multiple: the rounding multiple (the reference's ``make_vocab_size_divisible_by``).
        columns: ``"kept"`` compares the kept tokens only (GKD ``--distill_logit_mask_map``) or
            ``"all"`` compares all ``V`` teacher columns, dropped ids repeating their row's logit.
        teacher_inputs: ``"original"`` ids, or ``"replaced"`` (every dropped token replaced by the kept
            token the student reads; GKD ``--logitsdistil_teacher_input_ids_map``).
        similarity: how a dropped token's replacement is chosen from a teacher's input embeddings:
            ``"decoder"`` (dot product), ``"cosine"`` or ``"euclidean"`` (GKD ``--student_map_vocab_method``).
        similarity_teacher: the teacher whose embeddings decide (GKD ``--student_map_vocab_tn``);
            ``None`` replaces every dropped token by ``[UNK]``.
        vocab_map: a ``vocab_map.json`` (or a directory holding one) to use instead of building a map;
            default: the student directory's own ``vocab_map.json`` when it has one.
        token_counts: a file of corpus counts (one integer per line, line ``i`` = token id ``i``) to
            build the map from when the module is created; default: count the training data's
            ``input_ids`` when fitting starts.
        count_limit: count at most this many training sequences (``None``: all).
        protected_words: verbalizer (label) words kept whatever their frequency, in their original
            and lower-case forms when each is a single token (special tokens always are).
        **kwargs: the :class:`LogitsDistil` and :class:`DistillationModule` arguments.
    """

    on_policy_refused = (
        "its student reads and writes a compressed vocabulary, so its samples are not token ids the teacher reads"
    )

    def __init__(
        self,
        *,
        compressed_size: float = 0.5,
        size_multiple: int = 128,
        columns: Columns = "kept",
        teacher_inputs: TeacherInputs = "original",
        similarity: Similarity = "decoder",
        similarity_teacher: int | None = 0,
        vocab_map: str | None = None,
        token_counts: str | None = None,
        count_limit: int | None = None,
        protected_words: list[str] | None = None,
        **kwargs,
    ) -> None:
        student_source = kwargs.get("student")
        map_source = vocab_map
        if map_source is None and isinstance(student_source, str) and map_file(student_source).is_file():
            map_source = str(map_file(student_source))
        super().__init__(**kwargs)
        if map_source is not None and token_counts is not None:
            raise ValueError("Give vocab_map (a finished map) or token_counts (to build one), not both.")
        if similarity_teacher is not None and not 0 <= similarity_teacher < len(self.teachers):
            raise ValueError(f"similarity_teacher={similarity_teacher} but there are {len(self.teachers)} teachers (0-based), or None for [UNK].")
        if count_limit is not None and count_limit <= 0:
            raise ValueError(f"count_limit must be a positive number of sequences, got {count_limit}.")
        self.columns, self.teacher_ids = columns, teacher_inputs  # the knob's value; teacher_inputs() applies it
        self.similarity, self.similarity_teacher = similarity, similarity_teacher
        self.count_limit, self.protected_words = count_limit, list(protected_words or [])
        if self.tokenizer_source and Path(self.tokenizer_source).is_dir() and map_file(self.tokenizer_source).is_file():
            raise ValueError(
                f"The tokenizer at {self.tokenizer_source} was exported by VocabDistil and emits student rows; batches must "
                "hold the teacher's ids. Give the teacher's tokenizer (the data module's tokenizer / export_tokenizer)."
            )
        self._tokenizer = load_tokenizer(self.tokenizer_source)
        vocab = self.teachers[0].config.vocab_size
        self.tokenizer_size = len(self._tokenizer) if self._tokenizer is not None else vocab
        rows = compressed_vocab_size(compressed_size, min(self.tokenizer_size, vocab), size_multiple)
        if map_source is not None:
            _check_loaded_map(map_source, rows, compressed_size, similarity, similarity_teacher, count_limit, protected_words)
        if self.top_n is not None and self.columns == "kept":
            top_n_count(self.top_n, rows)
        self.vocab_map = VocabularyMap(vocab, rows)
        student_vocab = self.student.config.vocab_size
        if student_vocab not in (vocab, rows):
            raise ValueError(
                f"The student has {student_vocab} vocabulary rows; VocabDistil needs the teacher's {vocab} (to compress) "
                f"or the compressed {rows}."
            )
        # RoBERTa, XLM-R, MPNet: position ids count from one token id, which must stay that token's row.
        self.pinned_ids = pinned_token_ids(self.student)
        family = f"{type(self.student).__name__} ({self.student.config.model_type})"
        if any(index >= rows for index in self.pinned_ids):
            raise ValueError(
                f"{family} derives position ids from token id {self.pinned_ids}, which must keep that row, but the "
                f"compressed vocabulary has {rows} rows; choose a larger compressed_size."
            )
        if map_source is not None:
            self.vocab_map.load(map_source)
            moved = [index for index in self.pinned_ids if int(self.vocab_map.student_row[index]) != index]
            if moved:
                raise ValueError(
                    f"The vocabulary map {map_source} moves token {moved[0]} to row {int(self.vocab_map.student_row[moved[0]])}, "
                    f"but {family} derives position ids from that id; build a new map (token_counts) for this student."
                )
            self._compress_student()  # the student's rows, and its LM head's when that came from the teacher's vocabulary
        elif student_vocab == rows:
            raise ValueError(
                f"The student already has {rows} rows but no vocabulary map: use the directory VocabDistil exported it to "
                f"(it holds {MAP_FILE}) or give vocab_map."
            )
        elif token_counts is not None:
            self.build_vocabulary_map(_read_counts(token_counts, vocab))

    def _check_vocabularies(self) -> None:
        """Teachers share one vocabulary; the student's is checked against the map after construction."""
        sizes = {teacher.config.vocab_size for teacher in self.teachers}
        if len(sizes) > 1:
            raise ValueError(f"VocabDistil's teachers must share one vocabulary (the map's id space); they have {sorted(sizes)} tokens.")

    # ------------------------------------------------------------------ the map
    def build_vocabulary_map(self, counts: Tensor) -> VocabularyMap:
        """Build the map from corpus ``counts`` (``(V,)``) and compress the student to its rows."""
        if self.vocab_map.is_built:
            raise RuntimeError("The vocabulary map is already built; it is built once per student.")
        tokenizer = self._tokenizer
        if tokenizer is None:
            raise ValueError(
                "Building a vocabulary map needs the tokenizer (special tokens are always kept): set export_tokenizer "
                "(the CLI links it from the data module)."
            )
        embeddings = None
        if self.similarity_teacher is not None:
            embeddings = self.teachers[self.similarity_teacher].get_input_embeddings().weight
        self.vocab_map.build(
            counts,
            protected_token_ids(tokenizer, self.protected_words),
            self.tokenizer_size,
            embeddings=embeddings,
            similarity=self.similarity,
            unk_id=tokenizer.unk_token_id,
            pinned=self.pinned_ids,
        )
        self._compress_student()
        return self.vocab_map

    def _compress_student(self) -> None:
        """Shrink the student, and its fine-tuning LM head's bias (and untied decoder), to the map's rows."""
        rows, ids = self.vocab_map.row_token, self.vocab_map.student_row
        if self.student.config.vocab_size != rows.numel():
            compress_model_vocabulary(self.student, rows, ids)
        head = self.student_vocab_head
        if head is not None and head.rows is not None and head.rows != rows.numel():
            head.keep_rows(rows)

    def setup(self, stage: str) -> None:
        """Build the map when fitting starts, from the training data's token counts, if there is none yet."""
        super().setup(stage)
        if stage != "fit" or self.vocab_map.is_built:
            return
        if self.trainer.ckpt_path:
            # The checkpoint brings the map and the compressed rows; only the shapes must exist before the optimizer.
            self._compress_student()
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        dataset = getattr(datamodule, "datasets", {}).get("train") if datamodule is not None else None
        if dataset is None:
            raise ValueError(
                "VocabDistil counts tokens in the data module's datasets['train'] to build its vocabulary map; this data "
                "module has none. Give token_counts (a counts file) or vocab_map."
            )
        counts = count_token_ids(dataset, self.vocab_map.teacher_vocab_size, self.count_limit)
        if self.trainer.world_size > 1:  # streamed shards differ per rank; summing gives every rank the same map
            counts = self.trainer.strategy.reduce(counts.to(self.trainer.strategy.root_device), reduce_op="sum").cpu()
        rank_zero_info(f"VocabDistil: building a {self.vocab_map.student_vocab_size}-row vocabulary from {int(counts.sum())} tokens.")
        self.build_vocabulary_map(counts)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Compress the student to the checkpoint's map before its weights are loaded."""
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("state_dict", {})
        if not self.vocab_map.is_built and "vocab_map.student_row" in state:
            self.vocab_map.load_tensors(state["vocab_map.student_row"], state["vocab_map.row_token"])
            self._compress_student()

    # ------------------------------------------------------------------ inputs and columns
    def student_inputs(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """``batch`` as the student reads it: ids (and MLM labels) sent to student rows."""
        if not self.vocab_map.is_built:
            raise RuntimeError(
                "VocabDistil builds its vocabulary map when fitting starts; outside a Trainer call "
                "build_vocabulary_map(counts) first, or give token_counts / vocab_map."
            )
        mapped = {**batch, "input_ids": self.vocab_map.student_ids(batch["input_ids"])}
        if self.task_stage.token_level and "labels" in batch:
            mapped["labels"] = self.vocab_map.student_labels(batch["labels"])
        return mapped

    def teacher_inputs(self, batch: dict[str, Tensor], teacher_index: int) -> dict[str, Tensor]:
        """``batch`` as the teachers read it: with ``teacher_inputs="replaced"``, every dropped token replaced
        by the kept token whose row the student reads (idempotent: kept tokens map to themselves)."""
        batch = super().teacher_inputs(batch, teacher_index)
        if self.teacher_ids == "replaced":
            batch = {**batch, "input_ids": self.vocab_map.replaced_ids(batch["input_ids"])}
        return batch

    def compared_columns(self, student_logits: Tensor, teacher_logits: Tensor) -> tuple[Tensor, Tensor]:
        """``kept``: student rows vs the teacher at the kept ids; ``all``: all ``V`` ids on both sides."""
        if self.columns == "kept":
            return student_logits, self.vocab_map.kept_teacher_logits(teacher_logits)
        return self.vocab_map.full_student_logits(student_logits), teacher_logits

    # ------------------------------------------------------------------ export
    def export_student(self, directory: str | Path) -> Path:
        """The compressed student, ``vocab_map.json``, and the tokenizer rewritten to emit student rows."""
        if not self.vocab_map.is_built:
            raise RuntimeError("Nothing to export yet: the vocabulary map is built when fitting starts.")
        target = Path(directory).resolve()
        staging = target.parent / f".{target.name}.vocab-{uuid.uuid4().hex[:8]}"
        try:
            super().export_student(staging)
            self.vocab_map.save(staging / MAP_FILE)
            remap_tokenizer_files(staging, self.vocab_map.student_row.tolist())
            atomic_replace_directory(staging, target)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return target


def _check_loaded_map(source: str, rows: int, size: float, similarity, teacher, count_limit, words) -> None:
    """A finished map must match ``compressed_size``, and the knobs that only build maps must be left unset."""
    found = read_map_file(source)["student_vocab_size"]
    if found != rows:
        raise ValueError(f"The vocabulary map {source} has {found} rows but compressed_size={size} gives {rows}; make them agree.")
    builders = [name for name, value, default in (
        ("similarity", similarity, "decoder"), ("similarity_teacher", teacher, 0), ("count_limit", count_limit, None),
        ("protected_words", words, None)) if value != default]
    if builders:
        raise ValueError(f"{', '.join(builders)} only shape a new vocabulary map, but the student brings one ({source}); remove them.")


def _read_counts(path: str, vocab_size: int) -> Tensor:
    """Counts from a file with one integer per line (line ``i``: token id ``i``); missing ids count 0."""
    values = [int(line.split()[-1]) for line in Path(path).read_text().splitlines() if line.strip()]
    if len(values) > vocab_size:
        raise ValueError(f"{path} has {len(values)} counts for a vocabulary of {vocab_size} ids.")
    return torch.tensor(values + [0] * (vocab_size - len(values)), dtype=torch.long)

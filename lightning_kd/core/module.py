"""DistillationModule: the student, its frozen teacher(s), the training step and the student export.

A method subclasses :class:`DistillationModule` and overrides only what it adds:

* :meth:`student_request` / :meth:`teacher_request` — which tensors it needs from each forward;
* :meth:`teacher_terms` — its loss terms for one teacher (the prediction loss is included by default);
* :meth:`student_terms` — terms that need no teacher (the hard loss by default).

Everything else (loading, freezing, multi-teacher combination, logging, optimisation, checkpoint
hygiene, export) lives here once.
"""

from __future__ import annotations

import dataclasses
import inspect
import warnings
from pathlib import Path
from typing import Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.core.mixins import HyperparametersMixin
from pytorch_lightning.utilities.parsing import collect_init_args
from torch import Tensor, nn
from transformers import PreTrainedModel

from lightning_kd.cache import TeacherCache
from lightning_kd.core.export import export_model, load_tokenizer
from lightning_kd.core.attention_capture import check_attention_layers
from lightning_kd.core.features import Features, FeatureRequest, capture
from lightning_kd.core.compact_head import compact_heads_default
from lightning_kd.core.logit_rows import LogitRows, row_mask, widest
from lightning_kd.core.optim import Schedule, build_optimizer
from lightning_kd.core.random_inputs import RandomInputs, randomise_batch
from lightning_kd.core.multi_teacher import Average, MultiTeacherStrategy, TeacherStep
from lightning_kd.core.memory import MemoryCheck, check_memory
from lightning_kd.core.placement import check_placements, partition_teacher, resolve_placement, teacher_device
from lightning_kd.core.teachers import describe_source, load_teachers
from lightning_kd.fault.nonfinite import check_finite_loss
from lightning_kd.losses.prediction import PredictionLoss
from lightning_kd.models.loading import ModelSource, Precision, TaskHead, enable_activation_checkpointing, head_of, load_config, load_model
from lightning_kd.models.student_init import select_teacher_layers, copy_teacher_weights, truncated_copy

# Frozen teachers are in eval mode on purpose; Lightning would warn about them at every fit.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")

StudentInit = Literal["pretrained", "random", "teacher_first", "teacher_uniform", "teacher_layers"]


class _ChecksAfterConstruction(type):
    """Runs :meth:`DistillationModule.check_construction` once the *whole* constructor chain is done,
    so a subclass's requests (set after ``super().__init__``) are known before any training step."""

    def __call__(cls, *args, **kwargs):
        module = super().__call__(*args, **kwargs)
        module.check_construction()
        return module


class DistillationModule(pl.LightningModule, metaclass=_ChecksAfterConstruction):
    """Base of every method: a trainable student distilled from frozen teachers.

    Args:
        student: the student: a built HF model, a local directory, ``embedded:<name>`` or a hub
            name. May be omitted when ``student_init`` copies teacher layers (the student is then
            the teacher's architecture with fewer layers).
        teacher: one teacher (a built model or a source as for ``student``).
        teachers: several teachers instead of ``teacher``; combined by ``multi_teacher``.
        multi_teacher: strategy that combines per-teacher losses (default: :class:`Average`).
        task_head: ``"sequence_classification"`` (fine-tuning) or ``"masked_lm"`` (pre-training).
            The CLI links it from the data module; by default it is read from the teacher.
        num_labels: number of task labels (1 = regression); linked from the data module by the CLI.
        export_tokenizer: tokenizer saved with the exported student (the CLI links it from the data
            module's ``tokenizer``; default: the teacher's or student's own directory).
        student_init: ``"pretrained"`` loads ``student``'s weights; ``"random"`` builds it from its
            config; ``"teacher_first"`` / ``"teacher_uniform"`` copy ``student_layers`` teacher layers
            (the first ones, or the last of each uniform segment); ``"teacher_layers"`` copies the
            explicit 0-based teacher layers listed in ``student_layers``.
        student_layers: a layer count (``teacher_first``/``teacher_uniform``) or a list of teacher
            layers (``teacher_layers``).
        allow_width_truncation: when copying teacher layers into a narrower student, copy the
            leading slice of each weight (GKD behaviour) instead of refusing.
        teacher_precision: teacher weights' dtype (one for all, or one per teacher); captured tensors
            are upcast to float32 for the loss math. Independent of the trainer's precision: teachers
            are not submodules, so neither AMP plugins nor DeepSpeed cast them.
        teacher_placement: where each teacher runs (one for all, or one per teacher): ``"auto"``
            (ZeRO-3 partitions under DeepSpeed stage 3, else the student's device), ``"student"``,
            ``"cpu"`` (offloaded to host memory), a device such as ``"cuda:1"``, or ``"zero3"``; see
            :mod:`lightning_kd.core.placement`.
        activation_checkpointing: recompute the student's layer activations in the backward pass
            instead of storing them (less memory, about one more student forward of time).
        memory_check: before fitting, print an estimate of the memory each device needs (teachers,
            student, gradients, optimizer, activations) and ``"error"`` (default) when it exceeds
            what the device has free, ``"warn"``, or ``"off"`` (no estimate).
        prediction: the prediction-level (soft/hard) loss; ``None`` means no prediction terms.
        forward_repeats: extra forward passes per training step on the same batch (GKD
            ``--forward_repeat_num``): the step runs ``1 + forward_repeats`` passes, each with fresh
            dropout, and every loss term is *summed* over them. Evaluation never repeats.
        random_inputs: replace the token ids by random ones on some passes (GKD
            ``--distill_random_data*``); see :class:`~lightning_kd.core.random_inputs.RandomInputs`.
            ``mode="replace"`` refuses a hard loss; ``mode="dual"`` keeps the random half out of it.
        teacher_cache: serve teacher outputs from a disk cache filled on the first pass over the data
            (offline distillation; see :class:`~lightning_kd.cache.TeacherCache` and ``docs/teacher_cache.md``).
            Refused with ``random_inputs`` and with methods whose teacher inputs change from step to step.
        learning_rate: peak AdamW learning rate.
        weight_decay: AdamW weight decay (not applied to biases and normalisation weights).
        warmup_ratio: fraction of the optimizer steps used for linear warm-up.
        lr_schedule: decay after warm-up: ``"linear"``, ``"cosine"`` or ``"constant"``.
        final_lr_ratio: learning rate at the end of the decay, as a fraction of the peak.
        adam_epsilon: AdamW epsilon.
    """

    #: Methods whose every term compares with a teacher set this so a teacher-less run fails early.
    requires_teacher: bool = True
    #: Methods that use teacher modules or weights inside their step (not only through
    #: :meth:`run_teacher`) set this: their teachers then always sit whole on the student's device.
    reads_teacher_weights: bool = False

    def __init__(
        self,
        student: ModelSource | None = None,
        teacher: ModelSource | None = None,
        *,
        teachers: list[ModelSource] | None = None,
        multi_teacher: MultiTeacherStrategy | None = None,
        task_head: TaskHead | None = None,
        num_labels: int | None = None,
        export_tokenizer: str | None = None,
        student_init: StudentInit = "pretrained",
        student_layers: int | list[int] | None = None,
        allow_width_truncation: bool = False,
        teacher_precision: Precision | list[Precision] = "float32",
        teacher_placement: str | list[str] = "auto",
        activation_checkpointing: bool = False,
        memory_check: MemoryCheck = "error",
        prediction: PredictionLoss | None = None,
        forward_repeats: int = 0,
        random_inputs: RandomInputs | None = None,
        teacher_cache: TeacherCache | None = None,
        learning_rate: float = 5e-5,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.0,
        lr_schedule: Schedule = "linear",
        final_lr_ratio: float = 0.0,
        adam_epsilon: float = 1e-8,
    ) -> None:
        super().__init__()
        frame = inspect.currentframe()
        # Models given as objects (a student, a teacher, a method's head source) are never hyper-parameters:
        # checkpoints would pickle them. Their sources are recorded by on_save_checkpoint instead.
        objects = [name for name, value in _init_args(frame).items() if _holds_module(value)]
        self.save_hyperparameters(ignore=["student", "teacher", "teachers", "multi_teacher", "teacher_cache", *objects], frame=frame)
        _allow_in_checkpoints(dict(self.hparams))
        if teacher is not None and teachers:
            raise ValueError("Give either `teacher` or `teachers`, not both.")
        sources = list(teachers or ([teacher] if teacher is not None else []))
        if self.requires_teacher and not sources:
            raise ValueError(f"{type(self).__name__} distils from a teacher: set `teacher` (or `teachers`).")
        if not self.requires_teacher and sources:
            raise ValueError(f"{type(self).__name__} trains the student alone; remove `teacher`/`teachers`.")
        if prediction is not None and prediction.soft_weight > 0 and not sources:
            raise ValueError("prediction.soft_weight > 0 needs a teacher; set soft_weight=0 or give a teacher.")
        self.teacher_sources = [describe_source(s) for s in sources]
        self.tokenizer_source = export_tokenizer or _first_str(sources) or _first_str([student])
        self.task_head = task_head or _infer_head(sources, student)
        self.num_labels = num_labels
        self.prediction = prediction
        self.multi_teacher = multi_teacher or Average()
        self.forward_repeats, self.random_inputs = forward_repeats, random_inputs
        #: Index of the forward pass being computed (0 = the normal pass, i = the i-th repeat).
        self.pass_index = 0
        _check_repeats(forward_repeats, random_inputs, prediction)
        # A method whose intermediate losses live in a reusable module (so MixBaseline can combine
        # them) assigns it here after this constructor; the default hooks then use its requests and
        # terms. It provides student_request(), teacher_request(index) and forward(batch, student, teacher, index).
        self.intermediate: nn.Module | None = None

        self.teacher_placement = check_placements(teacher_placement, len(sources))
        # Teachers are kept outside the module tree on purpose (object.__setattr__ skips nn.Module's
        # registration): no strategy wraps, casts, partitions or checkpoints them behind our back.
        object.__setattr__(self, "_teachers", load_teachers(sources, self.task_head, num_labels, teacher_precision))
        self._teacher_engines: list = []  # inference-only ZeRO-3 engines that keep partitioned teachers alive
        self.memory_check = memory_check
        # from_pretrained returns eval mode; Lightning keeps a module's mode, so switch dropout on here.
        self.student = self._build_student(student, student_init, student_layers, allow_width_truncation).train()
        if activation_checkpointing:
            enable_activation_checkpointing(self.student)
        self._check_vocabularies()
        self._val_metrics = self._test_metrics = None
        self.teacher_cache = teacher_cache  # checked in check_construction, once the method's requests are known

    # ------------------------------------------------------------------ construction
    def _build_student(
        self, source: ModelSource | None, init: StudentInit, layers: int | list[int] | None, allow_width_truncation: bool
    ) -> PreTrainedModel:
        head, labels = self.task_head, self.num_labels
        if init in ("pretrained", "random"):
            if source is None:
                raise ValueError(f"student_init={init!r} needs `student` (a model, directory or name).")
            if layers is not None:
                raise ValueError("student_layers only applies when student_init copies teacher layers.")
            return load_model(source, head, labels, role="student", random_init=init == "random")
        if not self.teachers:
            raise ValueError(f"student_init={init!r} copies teacher layers, so it needs a teacher.")
        teacher = self.teachers[0]
        depth = teacher.config.num_hidden_layers
        if init == "teacher_layers":
            if not isinstance(layers, list):
                raise ValueError("student_init='teacher_layers' needs student_layers as a list of 0-based teacher layers.")
            chosen = select_teacher_layers(layers, None, depth)
        else:
            if not isinstance(layers, int):
                raise ValueError(f"student_init={init!r} needs student_layers as a layer count, e.g. student_layers: 3.")
            chosen = select_teacher_layers(init.removeprefix("teacher_"), layers, depth)
        if source is None:
            return truncated_copy(teacher, chosen)
        student = load_model(source, head, labels, role="student", random_init=True)
        if student.config.num_hidden_layers != len(chosen):
            raise ValueError(
                f"The student config has {student.config.num_hidden_layers} layers but {len(chosen)} teacher layers were chosen."
            )
        copy_teacher_weights(teacher, student, chosen, allow_width_truncation)
        return student

    def _check_vocabularies(self) -> None:
        """Teacher and student read the same input ids, so their embedding tables must agree."""
        student_vocab = self.student.config.vocab_size
        for index, teacher in enumerate(self.teachers):
            if teacher.config.vocab_size != student_vocab:
                raise ValueError(
                    f"Teacher {index} has a vocabulary of {teacher.config.vocab_size} tokens but the student has "
                    f"{student_vocab}; both read the same token ids, so they must share a tokenizer. "
                    "Use a student built for the teacher's tokenizer (or VocabDistil for a compressed vocabulary)."
                )

    def __setstate__(self, state: dict) -> None:
        # A module unpickled in another process (ddp_spawn workers) registers its hyper-parameter
        # classes there too, or resuming from a checkpoint with weights_only loading fails.
        super().__setstate__(state)
        _allow_in_checkpoints(dict(self.hparams))

    def check_construction(self) -> None:
        """Refuse, at construction, models whose attention this method cannot read exactly.

        Runs after the subclass's constructor (see :class:`_ChecksAfterConstruction`). Attention is
        read from transformers' attention interface (:mod:`lightning_kd.core.attention_capture`): a
        family that computes attention elsewhere, an attention layer out of range, or a student and
        teacher whose compared layers attend differently (causal vs bidirectional, other windows) is
        an error naming the family and the fix. A teacher cache checks the finished method here too.
        """
        if self.teacher_cache is not None:
            self.teacher_cache.check_module(self)
        name = type(self).__name__
        student_layers = self.student_request().hooked_layers
        student = check_attention_layers(self.student, student_layers, "student", name) if student_layers else None
        for index, teacher in enumerate(self.teachers):
            layers = self.teacher_request(index).hooked_layers
            if not layers:
                continue
            layout = check_attention_layers(teacher, layers, f"teacher {index}", name)
            if student is None:
                continue
            ours, theirs = {student.kind(l) for l in student_layers}, {layout.kind(l) for l in layers}
            if ours != theirs:
                raise ValueError(
                    f"{name} compares attention of student layers {sorted(student_layers)} with teacher {index} layers "
                    f"{sorted(layers)}, but they attend differently (causal, sliding window): student {sorted(ours, key=str)} "
                    f"vs teacher {sorted(theirs, key=str)}. Use a student and teacher of one attention type, or pair "
                    "layers of the same type."
                )

    # ------------------------------------------------------------------ method hooks
    @property
    def teachers(self) -> nn.ModuleList:
        """The frozen teachers (not submodules: absent from ``parameters()``, ``state_dict()`` and checkpoints)."""
        return self._teachers

    #: Set by methods whose token (MLM) logits are read only by their :class:`PredictionLoss` terms
    #: (:meth:`prediction_losses`), the hard loss, the multi-teacher strategy and the metrics: each model
    #: then computes only the logit rows those read (:meth:`student_logit_rows`). ``False`` (default):
    #: the method's own terms may read any row, so every row is computed.
    prediction_only_logits: bool = False

    @property
    def compact_heads(self) -> bool:
        """Compact heads: each model projects only the token-logit rows a step reads
        (:mod:`lightning_kd.core.compact_head`). ``method.compact_heads = False`` computes every row
        through each model's own forward, as HF does (same values; for parity checks and debugging);
        unset, ``LIGHTNING_KD_COMPACT_HEADS`` decides (``0`` off, ``1`` or unset on)."""
        explicit = self.__dict__.get("_compact_heads")
        return compact_heads_default() if explicit is None else explicit

    @compact_heads.setter
    def compact_heads(self, value: bool) -> None:
        self.__dict__["_compact_heads"] = bool(value)

    def student_request(self) -> FeatureRequest:
        """Tensors the method needs from the student's forward (logits are always captured; their rows
        come from :meth:`student_logit_rows`)."""
        return self.intermediate.student_request() if self.intermediate is not None else FeatureRequest()

    def teacher_request(self, teacher_index: int) -> FeatureRequest:
        """Tensors the method needs from teacher ``teacher_index``'s forward (logit rows: :meth:`teacher_logit_rows`)."""
        return self.intermediate.teacher_request(teacher_index) if self.intermediate is not None else FeatureRequest()

    def prediction_losses(self) -> list[PredictionLoss]:
        """The :class:`PredictionLoss` terms of a step (their soft positions name the logit rows read)."""
        return [self.prediction] if self.prediction is not None else []

    def student_logit_rows(self) -> LogitRows:
        """The student's token-logit rows a training step reads: ``"all"`` unless
        :attr:`prediction_only_logits`; then the soft terms' positions, the labelled rows when the
        student's own loss is read, and what the multi-teacher strategy reads."""
        if not self.prediction_only_logits:
            return "all"
        kinds = [loss.logit_rows() for loss in self.prediction_losses()]
        if self.uses_student_loss() or self.multi_teacher.needs_student_loss:
            kinds.append("labelled")
        return widest(*kinds, self.multi_teacher.student_logit_rows())

    def teacher_logit_rows(self, teacher_index: int) -> LogitRows:
        """Teacher ``teacher_index``'s token-logit rows a training step reads (as :meth:`student_logit_rows`)."""
        if not self.prediction_only_logits:
            return "all"
        return widest(*(loss.logit_rows() for loss in self.prediction_losses()), self.multi_teacher.teacher_logit_rows())

    def student_features_request(self) -> FeatureRequest:
        """What the student's training forward captures: :meth:`student_request` with its logit rows
        (every row for sequence-level heads or with :attr:`compact_heads` off)."""
        rows = self.student_logit_rows() if self.compact_heads and self.task_head == "masked_lm" else "all"
        return dataclasses.replace(self.student_request(), logit_rows=rows)

    def teacher_features_request(self, teacher_index: int) -> FeatureRequest:
        """What teacher ``teacher_index``'s forward captures (and a teacher cache stores): its request with its logit rows."""
        rows = self.teacher_logit_rows(teacher_index) if self.compact_heads and self.task_head == "masked_lm" else "all"
        return dataclasses.replace(self.teacher_request(teacher_index), logit_rows=rows)

    def uses_student_loss(self) -> bool:
        """Whether a training step reads the student's own task/MLM loss (``Features.loss``).

        The student then runs with labels and its loss is computed (for an MLM head a softmax over
        every labelled row). By default: when the prediction loss has a hard term, which is what
        :meth:`student_terms` reads; a method that reads the loss elsewhere says so (MixBaseline).
        """
        return self.prediction is not None and self.prediction.hard_weight > 0

    def student_terms(self, batch: dict[str, Tensor], student: Features) -> dict[str, Tensor]:
        """Terms that need no teacher; default: the weighted hard (task or MLM) loss."""
        if self.prediction is not None and self.prediction.hard_weight > 0 and student.loss is not None:
            return {"hard": self.prediction.hard_weight * student.loss}
        return {}

    def teacher_terms(self, batch: dict[str, Tensor], student: Features, teacher: Features, teacher_index: int) -> dict[str, Tensor]:
        """Weighted terms comparing the student with one teacher: the soft prediction term and the
        :attr:`intermediate` module's terms."""
        terms = {}
        if self.prediction is not None and self.prediction.soft_weight > 0:
            per_sample = self.multi_teacher.per_sample
            terms["soft"] = self.prediction.soft_features(student, teacher, batch, per_sample=per_sample)
        if self.intermediate is not None:
            terms.update(self.intermediate(batch, student, teacher, teacher_index))
        return terms

    # ------------------------------------------------------------------ the step
    def run_teacher(self, index: int, batch: dict[str, Tensor]) -> Features:
        """Teacher ``index``'s features on ``batch`` (no graph, float32): read from :attr:`teacher_cache`
        when it holds every row of the batch, else from :meth:`teacher_forward` (the cache stores them)."""
        if self.teacher_cache is not None:
            return self.teacher_cache.teacher_features(self, index, batch)
        return self.teacher_forward(index, batch)

    def teacher_forward(self, index: int, batch: dict[str, Tensor]) -> Features:
        """Run teacher ``index`` live on ``batch`` where :attr:`teacher_placement` puts it; the
        features come back on the student's device, upcast to float32, without a graph."""
        teacher, device = self._placed_teacher(index)
        if device != self.device:
            batch = {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}
        with torch.no_grad():
            features = capture(teacher, batch, self.teacher_features_request(index), upcast=True)
        return features if device == self.device else features.to(self.device)

    def resolved_placement(self, index: int) -> str:
        """Teacher ``index``'s placement for the current trainer: ``"student"``, ``"zero3"``, or a device string."""
        reads = type(self).__name__ if self.reads_teacher_weights else None
        return resolve_placement(self.teacher_placement[index], self._trainer, reads)

    def _placed_teacher(self, index: int) -> tuple[nn.Module, torch.device]:
        """Teacher ``index`` and the device its forward runs on, moving it there the first time."""
        teacher = self.teachers[index]
        placement = self.resolved_placement(index)
        if placement == "zero3":
            if not self._teacher_engines:
                self._partition_teachers()
            return teacher, self.device
        device = self.device if placement == "student" else torch.device(placement)
        if teacher_device(teacher) != device:
            teacher.to(device)
        return teacher, device

    def _partition_teachers(self) -> None:
        for index, teacher in enumerate(self.teachers):
            if self.resolved_placement(index) == "zero3":
                self._teacher_engines.append(partition_teacher(teacher, self.trainer))

    def compute_losses(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The named, weighted loss terms of one training step plus ``"loss"``, their sum.

        With ``forward_repeats`` the step runs ``1 + forward_repeats`` passes on the same batch and each
        term is the sum over passes (:attr:`pass_index` tells a method which pass is running).
        """
        terms: dict[str, Tensor] = {}
        for pass_index in range(1 + self.forward_repeats):
            self.pass_index = pass_index
            for name, value in self._one_pass(batch).items():
                terms[name] = terms[name] + value if name in terms else value
        self.pass_index = 0
        if not terms:
            raise RuntimeError(
                f"{type(self).__name__} produced no loss term: every weight is 0 or the batch has no labels for the hard loss."
            )
        terms["loss"] = torch.stack([v.float() for v in terms.values()]).sum()
        return terms

    def _one_pass(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The terms of one forward pass: the student once, then the teachers one after the other,
        each releasing its activations before the next starts."""
        hard_batch = batch
        if self.random_inputs is not None and self.pass_index in self.random_inputs.passes:
            vocab_size = (self.teachers[0] if len(self.teachers) else self.student).config.vocab_size
            batch, hard_batch = randomise_batch(batch, self.random_inputs, vocab_size)
        # Labels only shape the student's own loss, so the student reads them from ``hard_batch``; its
        # logit rows are those the terms read in ``batch`` (a superset of hard_batch's labelled rows).
        with_labels = self.uses_student_loss() or self.multi_teacher.needs_student_loss
        request = self.student_features_request()
        student = capture(self.student, hard_batch, request, with_labels=with_labels, rows=row_mask(batch, request.logit_rows))
        terms = self.student_terms(hard_batch, student)
        if len(self.teachers):
            indices = self.multi_teacher.select_teachers(len(self.teachers), self.global_step)
            per_teacher, logits, rows = [], [], []
            for index in indices:
                teacher = self.run_teacher(index, batch)
                per_teacher.append(self.teacher_terms(batch, student, teacher, index))
                logits.append(teacher.logits)
                rows.append(teacher.logit_rows)
                del teacher  # release this teacher's activations before the next one runs
            step = TeacherStep(batch, student, logits, indices, self.global_step, rows)
            terms.update(self.multi_teacher.combine(per_teacher, step))
        return terms

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        terms = self.compute_losses(batch)
        # A NaN/inf loss stops the run here, before backward and the optimizer step, so the weights and
        # every checkpoint stay finite; NonFiniteLossError names the terms and the last good checkpoint.
        check_finite_loss(self, terms, batch_idx)
        size = batch["input_ids"].shape[0]
        for name, value in terms.items():
            self.log(f"train/{name}", value.detach(), prog_bar=name == "loss", batch_size=size)
        return terms["loss"]

    # ------------------------------------------------------------------ evaluation
    def setup(self, stage: str) -> None:
        if stage == "fit" and self._trainer is not None:
            for index in range(len(self.teachers)):
                self.resolved_placement(index)  # a wrong strategy or placement fails before any work
            if self.memory_check != "off":
                check_memory(self, self.trainer, self.memory_check)
        builder = getattr(getattr(self.trainer, "datamodule", None), "build_metrics", None) if self._trainer else None
        if builder is not None:
            self._val_metrics, self._test_metrics = builder("val/"), builder("test/")
        else:
            from lightning_kd.metrics.defaults import default_metrics

            self._val_metrics, self._test_metrics = default_metrics(self.task_head, self.num_labels, "val/"), default_metrics(
                self.task_head, self.num_labels, "test/"
            )

    def _evaluate(self, batch: dict[str, Tensor], metrics, prefix: str) -> None:
        # MLM loss and masked-token accuracy read the labelled positions only: project just those rows.
        compact = self.compact_heads and self.task_head == "masked_lm"
        features = capture(self.student, batch, FeatureRequest(logit_rows="labelled" if compact else "all"), with_labels=True)
        size = batch["input_ids"].shape[0]
        if features.loss is not None:
            self.log(f"{prefix}loss", features.loss, prog_bar=True, batch_size=size, sync_dist=True)
        if metrics is not None and "labels" in batch:
            logits, labels = features.logits, batch["labels"]
            if features.logit_rows is not None:  # compact rows and their labels, e.g. (R, V) and (R,)
                logits, labels = features.logits_at(features.logit_rows), labels[features.logit_rows]
            metrics.to(self.device).update(logits.float(), labels)
            self.log_dict(metrics, prog_bar=True, batch_size=size)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self._val_metrics, "val/")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self._test_metrics, "test/")

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return capture(self.student, batch, FeatureRequest()).logits

    # ------------------------------------------------------------------ frozen teachers
    def train(self, mode: bool = True) -> "DistillationModule":
        """Switch the student (and method parts) to ``mode``; teachers stay in eval mode always."""
        super().train(mode)
        for teacher in self.teachers:
            teacher.eval()
        return self

    def to(self, *args, **kwargs) -> "DistillationModule":
        """Move (or cast) the module; teachers placed on the student's device follow its *device* only,
        never a dtype (``teacher_precision`` stays theirs)."""
        module = super().to(*args, **kwargs)
        device = torch._C._nn._parse_to(*args, **kwargs)[0]
        if device is not None:
            self._teachers_follow(device)
        return module

    def cuda(self, device=None) -> "DistillationModule":
        module = super().cuda(device)
        self._teachers_follow(self.device)
        return module

    def cpu(self) -> "DistillationModule":
        module = super().cpu()
        self._teachers_follow(torch.device("cpu"))
        return module

    def _teachers_follow(self, device: torch.device) -> None:
        for index, teacher in enumerate(self.teachers):
            if self.resolved_placement(index) == "student":
                teacher.to(device)

    def trainable_named_parameters(self):
        """``(name, parameter)`` of the student and the method's own parts (never a teacher's)."""
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Record where the teachers came from (their weights are never in a checkpoint)."""
        checkpoint["lightning_kd"] = {"teachers": self.teacher_sources, "method": type(self).__name__}

    def configure_callbacks(self):
        """The teacher cache's callback (binds it at fit start, commits its rows), when there is a cache."""
        return [self.teacher_cache.callback] if self.teacher_cache is not None else []

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        hp = self.hparams
        total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        # estimated_stepping_batches builds the train loader before a --ckpt_path checkpoint is restored,
        # and Lightning then never hands that loader its saved position. Dropping it makes the fit
        # loop rebuild it after the restore, so a resumed run continues mid-epoch with the same batches.
        if getattr(self.trainer.fit_loop, "_combined_loader", None) is not None:
            self.trainer.fit_loop._combined_loader = None
        return build_optimizer(
            self.trainable_named_parameters(),
            learning_rate=hp.learning_rate,
            weight_decay=hp.weight_decay,
            adam_epsilon=hp.adam_epsilon,
            schedule=hp.lr_schedule,
            warmup_ratio=hp.warmup_ratio,
            final_lr_ratio=hp.final_lr_ratio,
            total_steps=total_steps,
        )

    # ------------------------------------------------------------------ export
    def export_student(self, directory: str | Path) -> Path:
        """Write the student (and tokenizer) as a plain HF directory; method-only parts are left out."""
        metadata = {"method": type(self).__name__, "teachers": self.teacher_sources, "library": "lightning_kd"}
        return export_model(self.student, directory, load_tokenizer(self.tokenizer_source), metadata)


def _check_repeats(repeats: int, random_inputs: RandomInputs | None, prediction: PredictionLoss | None) -> None:
    """Validate ``forward_repeats`` and ``random_inputs`` together (see the constructor's docstring)."""
    if repeats < 0:
        raise ValueError(f"forward_repeats must be >= 0 (extra passes per step), got {repeats}.")
    if random_inputs is None:
        return
    if max(random_inputs.passes) > repeats:
        raise ValueError(
            f"random_inputs.passes lists pass {max(random_inputs.passes)} but the step runs passes 0..{repeats}; "
            f"set forward_repeats >= {max(random_inputs.passes)}."
        )
    if random_inputs.mode == "replace" and prediction is not None and prediction.hard_weight > 0:
        raise ValueError(
            "random_inputs mode 'replace' would score random tokens against the original labels: set the hard "
            "loss weight to 0 (hard_weight=0) or use mode 'dual', whose original half alone feeds the hard loss."
        )


def _allow_in_checkpoints(value) -> None:
    """Let ``torch.load(weights_only=True)`` (Lightning's resume default) read the knob dataclasses
    (e.g. :class:`PredictionLoss`) stored in a checkpoint's hyper-parameters."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        torch.serialization.add_safe_globals([type(value)])
        value = vars(value)
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        for item in value:
            _allow_in_checkpoints(item)


def _init_args(frame) -> dict:
    """The constructor arguments Lightning's ``save_hyperparameters`` would collect from ``frame``."""
    found: dict = {}
    for local in collect_init_args(frame, [], classes=(HyperparametersMixin,)):
        found.update(local)
    return found


def _holds_module(value) -> bool:
    if isinstance(value, (list, tuple)):
        return any(_holds_module(item) for item in value)
    return isinstance(value, nn.Module)


def _first_str(items) -> str | None:
    return next((s for s in items if isinstance(s, str)), None)


def _infer_head(teachers: list[ModelSource], student: ModelSource | None) -> TaskHead:
    """The stage's head when the data module does not say: the first teacher's (or student's) head."""
    for source in [*teachers, student]:
        if isinstance(source, PreTrainedModel) and head_of(source):
            return head_of(source)
        if isinstance(source, str):
            for arch in load_config(source).architectures or []:
                if arch.endswith("ForSequenceClassification"):
                    return "sequence_classification"
                if arch.endswith(("ForMaskedLM", "ForPreTraining")):
                    return "masked_lm"
    raise ValueError(
        "Cannot tell whether this is fine-tuning or pre-training: set task_head to 'sequence_classification' "
        "or 'masked_lm' (the CLI links it from the data module)."
    )

"""DistillationModule: the Lightning side of a distillation — the training step, evaluation,
optimisation and export.

A method subclasses :class:`DistillationModule` and overrides only what it adds, through the hooks
of :class:`~lightning_kd.core.method_hooks.MethodHooks` (its requests and its loss terms); a method
whose step needs passes of its own (a perturbed or intervened forward) runs them with
:meth:`DistillationModule.run_pass`. The other responsibilities live in one object or file each
(``docs/architecture.md`` draws them):

* the frozen teachers — loading, precision, placement, ZeRO-3, device following, the teacher
  cache, the forward itself: :class:`~lightning_kd.core.teacher_pool.TeacherPool`;
* the student — initialisation modes, vocabulary check, head inference, activation
  checkpointing: :mod:`lightning_kd.core.student_builder`;
* interventions and the checks of repeated / randomised passes: :mod:`lightning_kd.core.passes`;
* checks after the whole constructor chain: :mod:`lightning_kd.core.construction`;
* hyper-parameters and safe checkpoint loading: :mod:`lightning_kd.core.hparams`;
* training batches the student or a teacher writes (on-policy, sequence-level KD):
  :class:`~lightning_kd.on_policy.GeneratedBatches`;
* private Lightning / torch APIs: :mod:`lightning_kd.compat`.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_info
import torch
from torch import Tensor, nn

from lightning_kd.cache import TeacherCache
from lightning_kd.compat import attached_trainer, device_of_to_args, forget_train_loader
from lightning_kd.core.construction import ChecksAfterConstruction, check_attention_requests
from lightning_kd.core.export import export_model, load_tokenizer
from lightning_kd.core.features import FeatureRequest, Features, capture
from lightning_kd.core.hparams import allow_in_checkpoints, save_constructor_arguments
from lightning_kd.core.logit_rows import row_mask
from lightning_kd.core.memory import MemoryCheck, check_memory
from lightning_kd.core.method_hooks import MethodHooks
from lightning_kd.core.multi_teacher import Average, MultiTeacherStrategy, TeacherStep
from lightning_kd.core.optim import Schedule, build_optimizer
from lightning_kd.core.passes import (
    Hooks,
    PassResult,
    TeacherHooks,
    TeacherTerms,
    check_repeats,
    entered,
    merge_combined,
    total_loss,
)
from lightning_kd.core.random_inputs import RandomInputs, randomise_batch
from lightning_kd.core.sequence_length import check_sequence_length
from lightning_kd.core.student_builder import StudentInit, build_student, check_vocabularies, infer_task_head
from lightning_kd.core.teacher_pool import TeacherPool
from lightning_kd.core.terms import LossTerms, Role
from lightning_kd.core.unlabelled import check_unlabelled_rows
from lightning_kd.cross_tokenizer.teacher_tokenizers import TeacherTokenizer, TeacherTokenizers
from lightning_kd.fault.nonfinite import check_finite_loss
from lightning_kd.losses.prediction import PredictionLoss
from lightning_kd.models.loading import ModelSource, Precision
from lightning_kd.on_policy import GeneratedBatches, Generation, SequenceKD, student_written
from lightning_kd.stages import Stage, TaskHead, stage_named
from lightning_kd.stages.positions import IntermediatePositions, resolve_positions, with_term_positions

# Frozen teachers are in eval mode on purpose; Lightning would warn about them at every fit.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")

__all__ = ["DistillationModule", "StudentInit"]


class DistillationModule(MethodHooks, pl.LightningModule, metaclass=ChecksAfterConstruction):
    """Base of every method: a trainable student distilled from frozen teachers.

    Args:
        student: the student: a built HF model, a local directory, ``embedded:<name>`` or a hub
            name. May be omitted when ``student_init`` copies teacher layers (the student is then
            the teacher's architecture with fewer layers).
        teacher: one teacher (a built model or a source as for ``student``).
        teachers: several teachers instead of ``teacher``; combined by ``multi_teacher``.
        multi_teacher: strategy that combines per-teacher losses (default: :class:`Average`).
        task_head: the stage (:mod:`lightning_kd.stages`): ``"sequence_classification"``
            (fine-tuning), ``"masked_lm"`` (MLM pre-training) or ``"causal_lm"`` (next-token
            distillation of decoder LMs). The CLI links it from the data module; by default it is
            read from the teacher's head.
        num_labels: number of task labels (1 = regression); linked from the data module by the CLI.
        export_tokenizer: tokenizer saved with the exported student (the CLI links it from the data
            module's ``tokenizer``; default: the teacher's or student's own directory).
        teacher_tokenizer: the tokenizer of a teacher of another family, one for every teacher or one entry
            per teacher (``None`` for a teacher that reads the student's tokens): that teacher reads its own
            encoding of the same text from the batch (:meth:`teacher_inputs`), and terms that pair the two
            models' tokens are refused at construction (:meth:`cross_tokenizer_refusal`). The CLI links it
            from the data module, which writes those encodings; see :mod:`lightning_kd.cross_tokenizer`.
        student_init: ``"pretrained"`` loads ``student``'s weights; ``"random"`` builds it from its
            config; ``"teacher_first"`` / ``"teacher_uniform"`` / ``"teacher_first_last"`` copy
            ``student_layers`` teacher layers (the first ones; the last of each uniform segment; or the
            first half and the last half as two contiguous blocks, the better start for a decoder LM);
            ``"teacher_layers"`` copies the explicit 0-based teacher layers listed in ``student_layers``.
            Without a teacher (StudentOnly) these modes copy the layers of ``student`` itself: the
            no-teacher baseline then starts from the weights a distilled student of those layers does.
            So they do in the causal-LM stage when every teacher reads another tokenizer (its layers
            cannot read the student's tokens: a truncated SmolLM2 distilled from Gemma).
        student_layers: a layer count (``teacher_first``/``teacher_uniform``/``teacher_first_last``)
            or a list of teacher layers (``teacher_layers``).
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
        intermediate_positions: the token positions per-token intermediate terms (hidden states,
            attention rows, relations) average over: ``"auto"`` (the stage's choice: the scored
            positions in the causal-LM stage — prompt and padding left out, as in the soft and hard
            terms — and every real token in the other stages), ``"scored"`` (causal-LM stage only) or
            ``"all_tokens"`` (every real token; prompts included in the causal-LM stage).
        forward_repeats: extra forward passes per training step on the same batch (GKD
            ``--forward_repeat_num``): the step runs ``1 + forward_repeats`` passes, each with fresh
            dropout, and every loss term is *summed* over them. Evaluation never repeats.
        random_inputs: replace the token ids by random ones on some passes (GKD
            ``--distill_random_data*``); see :class:`~lightning_kd.core.random_inputs.RandomInputs`.
            ``mode="replace"`` refuses a hard loss; ``mode="dual"`` keeps the random half out of it.
        teacher_cache: serve teacher outputs from a disk cache filled on the first pass over the data
            (offline distillation; see :class:`~lightning_kd.cache.TeacherCache` and ``docs/teacher_cache.md``).
            Refused with ``random_inputs`` and with methods whose teacher inputs change from step to step.
        on_policy: causal-LM stage: λ, the share of training batches on which the student continues the
            batch's prompts and the method's teacher terms read its tokens (GKD's on-policy distillation;
            0 = off, 1 = every batch). The student's own tokens are no targets, so the hard term is left out
            of those batches. See ``docs/on_policy.md``.
        generation: how the student decodes on on-policy batches (default: sampling at temperature 1, up to
            64 new tokens); see :class:`~lightning_kd.on_policy.Generation`.
        sequence_kd: causal-LM stage: the teacher writes the responses of (a share of) the training batches
            (Kim & Rush's sequence-level KD), cached on disk or decoded afresh; see :class:`~lightning_kd.on_policy.SequenceKD`.
        learning_rate: peak AdamW learning rate.
        weight_decay: AdamW weight decay (not applied to biases and normalisation weights).
        warmup_ratio: fraction of the optimizer steps used for linear warm-up.
        lr_schedule: decay after warm-up: ``"linear"``, ``"cosine"`` or ``"constant"``.
        final_lr_ratio: learning rate at the end of the decay, as a fraction of the peak.
        adam_epsilon: AdamW epsilon.
    """

    #: Why this method cannot train on its student's samples (``on_policy``), or ``None`` when it can: a
    #: method whose terms are not defined on a generated sequence says so (see ``docs/on_policy.md``).
    on_policy_refused: ClassVar[str | None] = None
    #: Why this method cannot train on data with unlabelled rows (``unlabelled_file`` / ``labelled_examples``),
    #: or ``None`` when it can (see :mod:`lightning_kd.core.unlabelled`).
    unlabelled_refused: ClassVar[str | None] = None

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
        teacher_tokenizer: TeacherTokenizer = None,
        student_init: StudentInit = "pretrained",
        student_layers: int | list[int] | None = None,
        allow_width_truncation: bool = False,
        teacher_precision: Precision | list[Precision] = "float32",
        teacher_placement: str | list[str] = "auto",
        activation_checkpointing: bool = False,
        memory_check: MemoryCheck = "error",
        prediction: PredictionLoss | None = None,
        intermediate_positions: IntermediatePositions = "auto",
        forward_repeats: int = 0,
        random_inputs: RandomInputs | None = None,
        teacher_cache: TeacherCache | None = None,
        on_policy: float = 0.0,
        generation: Generation | None = None,
        sequence_kd: SequenceKD | None = None,
        learning_rate: float = 5e-5,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.0,
        lr_schedule: Schedule = "linear",
        final_lr_ratio: float = 0.0,
        adam_epsilon: float = 1e-8,
    ) -> None:
        super().__init__()
        # Models given as objects are never hyper-parameters: checkpoints would pickle them. Their
        # sources are recorded by on_save_checkpoint instead.
        save_constructor_arguments(
            self, inspect.currentframe(), ignore=["student", "teacher", "teachers", "multi_teacher", "teacher_cache"]
        )
        if teacher is not None and teachers:
            raise ValueError("Give either `teacher` or `teachers`, not both.")
        sources = list(teachers or ([teacher] if teacher is not None else []))
        if self.requires_teacher and not sources:
            raise ValueError(f"{type(self).__name__} distils from a teacher: set `teacher` (or `teachers`).")
        if not self.requires_teacher and sources:
            raise ValueError(f"{type(self).__name__} trains the student alone; remove `teacher`/`teachers`.")
        if prediction is not None and prediction.soft_weight > 0 and not sources:
            raise ValueError("prediction.soft_weight > 0 needs a teacher; set soft_weight=0 or give a teacher.")
        self.tokenizer_source = export_tokenizer or _first_str(sources) or _first_str([student])
        #: The teachers that read their own tokenizer's encoding of the text (see :meth:`teacher_inputs`).
        self.teacher_tokenizers = TeacherTokenizers.of(teacher_tokenizer, export_tokenizer)
        self.teacher_tokenizers.check_teachers(len(sources))
        #: The stage (:mod:`lightning_kd.stages`) everything stage-dependent asks (``stage`` is left to the
        #: methods whose own training stages it counts: SID, MobileBERT).
        self.task_stage: Stage = stage_named(task_head or infer_task_head(sources, student))
        self.intermediate_positions = resolve_positions(self.task_stage, intermediate_positions)
        self.num_labels = num_labels
        self.prediction = prediction
        if sources:
            self.multi_teacher = multi_teacher or Average()
        elif multi_teacher is not None:
            raise ValueError(f"{type(self).__name__} trains the student alone; remove `multi_teacher`.")
        else:
            # Not a submodule: a run without teachers lists no strategy in its model summary.
            self.__dict__["multi_teacher"] = Average()
        self.forward_repeats, self.random_inputs = forward_repeats, random_inputs
        self._pass_index = 0
        check_repeats(forward_repeats, random_inputs, prediction)
        # A method whose intermediate losses live in a reusable module (so MixBaseline can combine
        # them) assigns it here after this constructor; the default hooks then use its requests and
        # terms. It provides student_request(), teacher_request(index) and forward(batch, student, teacher, index).
        self.intermediate: nn.Module | None = None

        # A plain object, not a submodule: no strategy wraps, casts, partitions or checkpoints the
        # teachers behind our back. The cache is checked in check_construction, once the requests are known.
        self.teacher_pool = TeacherPool(sources, self.task_stage, num_labels, teacher_precision, teacher_placement, teacher_cache)
        self.memory_check = memory_check
        # The teacher_* modes copy a teacher's layers only from a teacher that reads the student's tokens: the
        # layers of a decoder of another vocabulary cannot read them, so in the causal-LM stage with no such teacher
        # they come from `student` itself, as in a run without a teacher.
        donors = [t for index, t in enumerate(self.teachers) if not self.reads_own_vocabulary(index)]
        self.student = build_student(
            student, student_init, student_layers, head=self.task_stage, num_labels=num_labels, teachers=donors,
            allow_width_truncation=allow_width_truncation, activation_checkpointing=activation_checkpointing,
        )
        self._check_vocabularies()
        self._val_metrics = self._test_metrics = None
        #: Training batches the models write (on-policy, sequence-level KD), checked in check_construction; None when off.
        self.generated_batches: GeneratedBatches | None = GeneratedBatches.build(on_policy, generation, sequence_kd)

    # ------------------------------------------------------------------ construction
    @property
    def task_head(self) -> str:
        """The stage's name (``"sequence_classification"``, ``"masked_lm"`` or ``"causal_lm"``)."""
        return self.task_stage.name

    def prepare_batch(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """``batch`` as every reader of this method takes it: labels aligned with the logits by the
        stage (a causal stage shifts them once; idempotent) and, when intermediate terms read the
        scored positions, those positions named (:mod:`lightning_kd.stages.positions`).

        Every entry point calls it (:meth:`compute_losses`, :meth:`run_pass`, evaluation and
        prediction), so a batch straight from a data loader or from the user is read the same way; a
        method that reads labels before its passes run calls it first."""
        batch = self.task_stage.prepare(batch)
        return with_term_positions(batch) if self.intermediate_positions == "scored" else batch

    def _check_vocabularies(self) -> None:
        """Teacher and student read the same input ids, so their embedding tables must agree (a hook:
        VocabDistil's student reads mapped ids and checks its vocabulary map instead)."""
        check_vocabularies(self.student, self.teachers, own_tokenizer=[
            self.teacher_tokenizers.prefix_of(index) is not None for index in range(len(self.teachers))])

    def __setstate__(self, state: dict) -> None:
        # A module unpickled in another process (ddp_spawn workers) registers its hyper-parameter
        # classes there too, or resuming from a checkpoint with weights_only loading fails.
        super().__setstate__(state)
        allow_in_checkpoints(dict(self.hparams))

    def check_construction(self) -> None:
        """Refuse, at construction, models whose attention this method cannot read exactly, and a
        teacher cache the finished method cannot use.

        Runs after the subclass's constructor (see :class:`~lightning_kd.core.construction.ChecksAfterConstruction`);
        the attention rules are :func:`~lightning_kd.core.construction.check_attention_requests`.
        """
        if self.teacher_cache is not None:
            self.teacher_cache.check_module(self)
        if self.teacher_tokenizers and (reason := self.cross_tokenizer_refusal()) is not None:
            raise ValueError(
                f"{type(self).__name__} cannot learn from a teacher that reads another tokenizer (teacher_tokenizer: "
                f"{self.teacher_tokenizers.argument}): {reason}. Methods that compare one vector per example (KD on the "
                "task logits, PKD, Universal-KD, RAIL-KD, ALP-KD, …) or hidden states aligned by character spans "
                "(TinyBERT's hidden states, LRC-BERT, CKD, MGSKD) work across tokenizers (docs/cross_tokenizer.md); "
                "or give the teacher the student's tokenizer."
            )
        if self.prediction is not None and self.prediction.merge_spans and not any(
            self.reads_own_vocabulary(index) for index in range(len(self.teachers))
        ):
            raise ValueError(
                "prediction.merge_spans merges spans between two vocabularies; no teacher here reads another vocabulary in "
                "the causal-LM stage (teacher_tokenizer). Drop merge_spans."
            )
        check_attention_requests(self)
        if self.generated_batches is not None:
            self.generated_batches.check_method(self)

    # ------------------------------------------------------------------ teachers
    @property
    def teachers(self) -> nn.ModuleList:
        """The frozen teachers (not submodules: absent from ``parameters()``, ``state_dict()`` and checkpoints)."""
        return self.teacher_pool.models

    @property
    def teacher_sources(self) -> list[str]:
        """Where each teacher came from, as a checkpoint and an export record it."""
        return self.teacher_pool.sources

    @property
    def teacher_placement(self) -> list[str]:
        """Each teacher's placement as configured (``"auto"``, ``"student"``, ``"cpu"``, a device, ``"zero3"``)."""
        return self.teacher_pool.placements

    @property
    def teacher_cache(self) -> TeacherCache | None:
        """The teacher-output cache :meth:`run_teacher` reads, or ``None``."""
        return self.teacher_pool.cache

    @teacher_cache.setter
    def teacher_cache(self, cache: TeacherCache | None) -> None:
        self.teacher_pool.cache = cache

    def run_teacher(self, index: int, batch: dict[str, Tensor]) -> Features:
        """Teacher ``index``'s features on ``batch`` (no graph, float32): read from :attr:`teacher_cache`
        when it holds every row of the batch, else from :meth:`teacher_forward` (the cache stores them)."""
        return self.teacher_pool.run(index, batch, self)  # both paths read the teacher's inputs (teacher_inputs)

    def teacher_forward(self, index: int, batch: dict[str, Tensor], *, request: FeatureRequest | None = None) -> Features:
        """Run teacher ``index`` live on ``batch`` where :attr:`teacher_placement` puts it; the
        features come back on the student's device, upcast to float32, without a graph.

        Args:
            request: what to capture (default: :meth:`teacher_features_request`).
        """
        request = self.teacher_features_request(index) if request is None else request
        return self.teacher_pool.forward(index, self.teacher_inputs(batch, index), request, device=self.device,
                                         **self._teacher_context())

    def place_teacher(self, index: int) -> tuple[nn.Module, torch.device]:
        """Teacher ``index`` where :attr:`teacher_placement` puts it (moved or partitioned the first time),
        and the device its inputs go to: for a method that runs a teacher other than through
        :meth:`teacher_forward` (e.g. ``generate`` for sequence-level KD)."""
        return self.teacher_pool.place(index, self.device, **self._teacher_context())

    def resolved_placement(self, index: int) -> str:
        """Teacher ``index``'s placement for the current trainer: ``"student"``, ``"zero3"``, or a device string."""
        return self.teacher_pool.placement(index, **self._teacher_context())

    def _teacher_context(self) -> dict:
        """What decides where the teachers run: the trainer, and whether this method reads their weights."""
        return {"trainer": attached_trainer(self), "reads_weights": type(self).__name__ if self.reads_teacher_weights else None}

    # ------------------------------------------------------------------ the step
    @property
    def pass_index(self) -> int:
        """Index of the forward pass being computed (0 = the normal pass, ``i`` = the ``i``-th repeat
        or a method's own extra pass); :meth:`run_pass` sets it while a pass runs."""
        return self._pass_index

    def compute_losses(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The named, weighted loss terms of one training step plus ``"loss"``, their sum.

        With ``forward_repeats`` the step runs ``1 + forward_repeats`` passes on the same batch and each
        term is the sum over passes (:attr:`pass_index` tells a method which pass is running).
        """
        batch = self.prepare_batch(batch)
        terms: dict[str, Tensor] = {}
        for pass_index in range(1 + self.forward_repeats):
            for name, value in self.run_pass(batch, pass_index=pass_index).terms.items():
                terms[name] = terms[name] + value if name in terms else value
        return total_loss(terms, type(self).__name__)

    def run_pass(
        self,
        batch: dict[str, Tensor],
        *,
        pass_index: int = 0,
        student_hooks: Hooks = (),
        teacher_hooks: TeacherHooks | None = None,
        student_request: FeatureRequest | None = None,
        teacher_request: Callable[[int], FeatureRequest] | None = None,
        student_loss: bool | None = None,
        teacher_terms: TeacherTerms | None = None,
        teachers: list[int] | None = None,
        combine: bool = True,
    ) -> PassResult:
        """One forward pass: the student once, then the selected teachers one after the other, each
        releasing its activations before the next starts, and the terms of it all.

        This is how a method runs a pass of its own: with interventions (``student_hooks`` /
        ``teacher_hooks``: context managers active while that model runs, e.g.
        :func:`~lightning_kd.core.passes.forward_hook`), other captures, or its own terms. Nothing
        else of the step changes: random inputs, the multi-teacher selection and combination, the
        teacher cache (for teachers run without interventions) and placement work as in the default step.

        Args:
            batch: the training batch.
            pass_index: which pass this is (0 = the normal pass); :attr:`pass_index` reads it while
                the pass runs, and ``random_inputs`` randomise the passes they list.
            student_hooks: context managers entered around the student's forward.
            teacher_hooks: for a teacher index, the context managers entered around that teacher's
                forward. A teacher with hooks or a ``teacher_request`` runs live (:meth:`teacher_forward`):
                a cache cannot serve intervened or other features.
            student_request: what the student captures (default: :meth:`student_features_request`).
            teacher_request: for a teacher index, what that teacher captures (default:
                :meth:`teacher_features_request`).
            student_loss: whether the student computes its own task/MLM loss (default: when
                :meth:`uses_student_loss` or the strategy reads it); ``False`` saves that work in a
                pass whose terms never read it.
            teacher_terms: one teacher's terms, ``(batch, student, teacher, index) -> LossTerms`` (or a
                plain dict, typed by name; default: :meth:`teacher_terms`).
            teachers: the teacher indices to run (default: the strategy's selection for this step).
            combine: merge the teachers' terms with the multi-teacher strategy into ``terms``; ``False``
                leaves them in ``per_teacher`` for a method that combines several passes at once.

        Returns:
            The pass's terms and features (:class:`~lightning_kd.core.passes.PassResult`).
        """
        previous, self._pass_index = self._pass_index, pass_index
        try:
            batch = self.prepare_batch(batch)
            hard_batch = batch
            if self.random_inputs is not None and pass_index in self.random_inputs.passes:
                vocab_size = (self.teachers[0] if len(self.teachers) else self.student).config.vocab_size
                batch, hard_batch = randomise_batch(batch, self.random_inputs, vocab_size)
            # Labels only shape the student's own loss, so the student reads them from ``hard_batch``; its
            # logit rows are those the terms read in ``batch`` (a superset of hard_batch's labelled rows).
            # A batch the student wrote (on-policy) has no data labels: its tokens are not targets, so the
            # student's own (hard) terms are left out and its loss is computed only for a strategy that reads it.
            own_terms = not student_written(batch)
            if student_loss is None:
                student_loss = (self.uses_student_loss() and own_terms) or self.multi_teacher.needs_student_loss
            request = self.student_features_request() if student_request is None else student_request
            with entered(student_hooks):
                student = capture(self.student, self.student_inputs(hard_batch), request, with_labels=student_loss,
                                  rows=row_mask(batch, request.logit_rows))
            if not len(self.teachers):  # on-policy batches need a teacher (refused at construction)
                return PassResult(LossTerms.wrap(self.student_terms(hard_batch, student), default=Role.HARD), student)
            indices = self.multi_teacher.select_teachers(len(self.teachers), self.global_step) if teachers is None else teachers
            live = teacher_hooks is not None or teacher_request is not None
            terms_of = self.teacher_terms if teacher_terms is None else teacher_terms
            per_teacher, logits, rows = [], [], []
            for index in indices:
                if live:
                    with entered(teacher_hooks(index) if teacher_hooks is not None else ()):
                        teacher = self.teacher_forward(index, batch, request=teacher_request(index) if teacher_request else None)
                else:
                    teacher = self.run_teacher(index, batch)
                per_teacher.append(LossTerms.wrap(terms_of(batch, student, teacher, index)))
                logits.append(teacher.logits)
                rows.append(teacher.logit_rows)
                del teacher  # release this teacher's activations before the next one runs
            step = TeacherStep(batch, student, logits, indices, self.global_step, rows)
            # The student's own terms after the teachers': with fused heads the soft term may have computed the
            # student's loss in its pass (one projection for both). Typed here once, so strategies read roles
            # whatever a method returned (a plain dict is typed by name; see lightning_kd.core.terms).
            terms = LossTerms.wrap(self.student_terms(hard_batch, student), default=Role.HARD) if own_terms else LossTerms()
            if combine:
                terms = merge_combined(terms, self.multi_teacher.combine(per_teacher, step), self.multi_teacher)
            return PassResult(terms, student, per_teacher, step)
        finally:
            self._pass_index = previous

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        if self.generated_batches is not None:  # on-policy / sequence-level KD: the student or a teacher may write it
            batch = self.generated_batches.training_batch(self, batch, batch_idx)
        terms = self.compute_losses(batch)
        # A NaN/inf loss stops the run here, before backward and the optimizer step, so the weights and
        # every checkpoint stay finite; NonFiniteLossError names the terms and the last good checkpoint.
        check_finite_loss(self, terms, batch_idx)
        size = batch["input_ids"].shape[0]
        for name, value in terms.items():
            self.log(f"train/{name}", value.detach(), prog_bar=name == "loss", batch_size=size)
        if self.generated_batches is not None:
            self.log("train/generation_seconds", self.generated_batches.step_seconds, batch_size=size)
        return terms["loss"]

    @property
    def generation_seconds(self) -> float | None:
        """Seconds this fit has spent generating training batches (``None`` without generated batches);
        the progress line reports its share of the training time."""
        return self.generated_batches.seconds if self.generated_batches is not None else None

    # ------------------------------------------------------------------ evaluation
    def setup(self, stage: str) -> None:
        trainer = attached_trainer(self)
        if stage == "fit" and trainer is not None:
            rank_zero_info(f"lightning_kd: {type(self).__name__}, stage {self.task_stage.name} ({self.task_stage.description})")
            self.teacher_pool.check(**self._teacher_context())  # a wrong strategy or placement fails before any work
            check_unlabelled_rows(self, getattr(trainer, "datamodule", None))
            check_sequence_length(self, getattr(trainer, "datamodule", None))
            if self.memory_check != "off":
                check_memory(self, trainer, self.memory_check)
            if self.generated_batches is not None:
                self.generated_batches.setup(self, trainer, getattr(trainer, "datamodule", None))
        builder = getattr(getattr(trainer, "datamodule", None), "build_metrics", None) if trainer is not None else None
        if builder is not None:
            self._val_metrics, self._test_metrics = builder("val/"), builder("test/")
        else:
            self._val_metrics, self._test_metrics = self.task_stage.metrics(self.num_labels, "val/"), self.task_stage.metrics(self.num_labels, "test/")

    def _evaluate(self, batch: dict[str, Tensor], metrics, prefix: str) -> None:
        # Token-level losses and metrics read the labelled positions only: project just those rows.
        compact = self.compact_heads and self.task_stage.token_level
        batch = self.student_inputs(self.prepare_batch(batch))  # the labels too, as the student's logits number them
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
        return capture(self.student, self.student_inputs(self.prepare_batch(batch)), FeatureRequest()).logits

    # ------------------------------------------------------------------ modes and devices
    def train(self, mode: bool = True) -> "DistillationModule":
        """Switch the student (and method parts) to ``mode``; teachers stay in eval mode always."""
        super().train(mode)
        self.teacher_pool.eval()
        return self

    def to(self, *args, **kwargs) -> "DistillationModule":
        """Move (or cast) the module; teachers placed on the student's device follow its *device* only,
        never a dtype (``teacher_precision`` stays theirs)."""
        module = super().to(*args, **kwargs)
        device = device_of_to_args(*args, **kwargs)
        if device is not None:
            self.teacher_pool.follow(device, **self._teacher_context())
        return module

    def cuda(self, device=None) -> "DistillationModule":
        module = super().cuda(device)
        self.teacher_pool.follow(self.device, **self._teacher_context())
        return module

    def cpu(self) -> "DistillationModule":
        module = super().cpu()
        self.teacher_pool.follow(torch.device("cpu"), **self._teacher_context())
        return module

    def trainable_named_parameters(self):
        """``(name, parameter)`` of the student and the method's own parts (never a teacher's)."""
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Record where the teachers came from (their weights are never in a checkpoint), and the seed that
        generated batches derive from."""
        checkpoint["lightning_kd"] = {"teachers": self.teacher_sources, "method": type(self).__name__}
        if self.generated_batches is not None:
            checkpoint["lightning_kd"]["generated_batches"] = self.generated_batches.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """A resumed run chooses and samples its generated batches as the interrupted one did."""
        state = (checkpoint.get("lightning_kd") or {}).get("generated_batches")
        if self.generated_batches is not None and state is not None:
            self.generated_batches.load_state_dict(state)

    def configure_callbacks(self):
        """The teacher cache's callback (binds it at fit start, commits its rows) and the teacher-response
        cache's (sequence-level KD), when there are such caches."""
        callbacks = [self.teacher_cache.callback] if self.teacher_cache is not None else []
        if self.generated_batches is not None and self.generated_batches.sequence_kd is not None:
            callbacks.append(self.generated_batches.callback)
        return callbacks

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        hp = self.hparams
        total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        forget_train_loader(self.trainer)  # built by the line above, before a resumed run's restore
        return build_optimizer(
            self,
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


def _first_str(items) -> str | None:
    return next((s for s in items if isinstance(s, str)), None)

"""Building the student: from its own weights, at random, or from teacher layers; then checked.

:func:`build_student` turns the constructor's student arguments into a trainable HF model with the
stage's head: ``"pretrained"`` loads ``student``'s weights, ``"random"`` builds it from its config,
and the ``teacher_*`` modes copy chosen teacher layers (into ``student``'s architecture, or into a
shortened copy of the teacher's). :func:`check_vocabularies` refuses a student that cannot read the
teachers' token ids, and :func:`infer_task_head` tells fine-tuning from pre-training when the data
module does not say. None of this needs a ``DistillationModule``::

    student = build_student(None, "teacher_uniform", 3, head="sequence_classification", teachers=[teacher])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from transformers import PreTrainedModel

from lightning_kd.models.loading import ModelSource, enable_activation_checkpointing, load_config, load_model
from lightning_kd.models.student_init import copy_teacher_weights, select_teacher_layers, truncated_copy
from lightning_kd.stages import Stage, TaskHead, stage_named, stage_of_architectures, stage_of_class

StudentInit = Literal["pretrained", "random", "teacher_first", "teacher_uniform", "teacher_first_last", "teacher_layers"]


def build_student(
    source: ModelSource | None,
    init: StudentInit,
    layers: int | list[int] | None,
    *,
    head: TaskHead | Stage,
    num_labels: int | None = None,
    teachers: Sequence[PreTrainedModel] = (),
    allow_width_truncation: bool = False,
    activation_checkpointing: bool = False,
) -> PreTrainedModel:
    """The student, in train mode, as the constructor's arguments describe it.

    Args:
        source: the student (a built model, a directory, ``embedded:<name>`` or a hub name); may be
            ``None`` for the ``teacher_*`` modes, which then build the teacher's class with fewer layers.
            Without teachers, the ``teacher_*`` modes copy the chosen layers of ``source`` itself.
        init: ``"pretrained"``, ``"random"``, ``"teacher_first"``, ``"teacher_uniform"``, ``"teacher_first_last"`` or ``"teacher_layers"``.
        layers: a layer count (``teacher_first``/``teacher_uniform``/``teacher_first_last``) or 0-based teacher layers
            (``teacher_layers``); ``None`` otherwise.
        head: the stage (or its name) whose head the student carries.
        num_labels: the task's label count (classification heads).
        teachers: the frozen teachers whose layers may be copied (those that read the student's tokens); the
            ``teacher_*`` modes copy from the first.
        allow_width_truncation: copy the leading slice of wider teacher weights instead of refusing.
        activation_checkpointing: recompute the student's layer activations in the backward pass.

    Raises:
        ValueError: arguments that do not fit the mode, a layer choice out of range, a student whose
            tensors do not match the teacher's, or a family without activation checkpointing.
    """
    # from_pretrained returns eval mode and Lightning keeps a module's mode: switch dropout on here.
    student = _initialised(source, init, layers, stage_named(head), num_labels, teachers, allow_width_truncation).train()
    if activation_checkpointing:
        enable_activation_checkpointing(student)
    return student


def _initialised(
    source: ModelSource | None,
    init: StudentInit,
    layers: int | list[int] | None,
    stage: Stage,
    num_labels: int | None,
    teachers: Sequence[PreTrainedModel],
    allow_width_truncation: bool,
) -> PreTrainedModel:
    if init in ("pretrained", "random"):
        if source is None:
            raise ValueError(f"student_init={init!r} needs `student` (a model, directory or name).")
        if layers is not None:
            raise ValueError("student_layers only applies when student_init copies teacher layers.")
        return load_model(source, stage, num_labels, role="student", random_init=init == "random")
    if not teachers and source is None:
        raise ValueError(
            f"student_init={init!r} copies layers of a teacher that reads the student's tokens (or, without one — no "
            "teacher, or every teacher on another tokenizer — of `student`): give `student`."
        )
    # Without a teacher (StudentOnly, the no-teacher baseline), the layers come from `student` itself, so
    # the baseline starts from exactly the weights a distilled student of those layers starts from.
    donor = teachers[0] if teachers else load_model(source, stage, num_labels, role="student")
    depth = donor.config.num_hidden_layers
    if init == "teacher_layers":
        if not isinstance(layers, list):
            raise ValueError("student_init='teacher_layers' needs student_layers as a list of 0-based teacher layers.")
        chosen = select_teacher_layers(layers, None, depth)
    else:
        if not isinstance(layers, int):
            raise ValueError(f"student_init={init!r} needs student_layers as a layer count, e.g. student_layers: 3.")
        chosen = select_teacher_layers(init.removeprefix("teacher_"), layers, depth)
    if source is None or not teachers:
        return truncated_copy(donor, chosen)
    student = load_model(source, stage, num_labels, role="student", random_init=True)
    if student.config.num_hidden_layers != len(chosen):
        raise ValueError(
            f"The student config has {student.config.num_hidden_layers} layers but {len(chosen)} teacher layers were chosen."
        )
    copy_teacher_weights(donor, student, chosen, allow_width_truncation)
    return student


def check_vocabularies(student: PreTrainedModel, teachers: Sequence[PreTrainedModel], own_tokenizer: Sequence[bool] = ()) -> None:
    """Teacher and student read the same input ids, so their embedding tables must agree.

    Args:
        own_tokenizer: per teacher, whether it reads its own tokenizer's encoding (``teacher_tokenizer``):
            such a teacher's vocabulary is its own business.

    Raises:
        ValueError: naming the teacher whose vocabulary size differs from the student's.
    """
    student_vocab = student.config.vocab_size
    for index, teacher in enumerate(teachers):
        if index < len(own_tokenizer) and own_tokenizer[index]:
            continue
        if teacher.config.vocab_size != student_vocab:
            raise ValueError(
                f"Teacher {index} has a vocabulary of {teacher.config.vocab_size} tokens but the student has "
                f"{student_vocab}; both read the same token ids, so they must share a tokenizer. "
                "Use a student built for the teacher's tokenizer, give the data module the teacher's tokenizer as "
                "teacher_tokenizer (two encodings of the same text), or VocabDistil for a compressed vocabulary."
            )


def infer_task_head(teachers: Sequence[ModelSource], student: ModelSource | None) -> TaskHead:
    """The stage's name when the data module does not say: the first teacher's head (or else the student's).

    Raises:
        ValueError: no source carries a classification, masked-LM or causal-LM head.
    """
    for source in [*teachers, student]:
        stage = None
        if isinstance(source, PreTrainedModel):
            stage = stage_of_class(type(source).__name__)
        elif isinstance(source, str):
            stage = stage_of_architectures(load_config(source).architectures)
        if stage is not None:
            return stage.name  # type: ignore[return-value]
    raise ValueError(
        "Cannot tell which stage this is: set task_head to 'sequence_classification', 'masked_lm' or 'causal_lm' "
        "(the CLI links it from the data module)."
    )

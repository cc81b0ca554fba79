"""Loading teachers and students as Hugging Face models with the head a stage needs.

The stage (:mod:`lightning_kd.stages`) names the auto class, recognises its head's class names and
says how to obtain a teacher with that head.
"""

from __future__ import annotations

from typing import Literal, Union

import torch
from transformers import AutoConfig, PreTrainedModel

from lightning_kd.data.sources import resolve_source
from lightning_kd.stages import Stage, TaskHead, stage_named

ModelSource = Union[str, PreTrainedModel]
Precision = Literal["float32", "bfloat16", "float16"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_config(source: str):
    """``AutoConfig`` of a model name, directory or ``embedded:`` name, with a clear error."""
    path = resolve_source(source)
    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise FileNotFoundError(
            f"Cannot load a model config from {source!r} ({error.__class__.__name__}). Give a local directory "
            "holding config.json (e.g. a lightning_kd export), 'embedded:all-MiniLM-L6-v2', or a hub name "
            "that is cached locally."
        ) from error


def load_model(
    source: ModelSource,
    stage: TaskHead | Stage,
    num_labels: int | None = None,
    *,
    role: Literal["teacher", "student"] = "student",
    dtype: Precision = "float32",
    random_init: bool = False,
) -> PreTrainedModel:
    """Build or load a model with the given head.

    Args:
        source: a built model (returned as is, after checks), a local directory, ``embedded:<name>``
            or a hub name.
        stage: the stage (:mod:`lightning_kd.stages`, or its name) whose head the model must carry.
        num_labels: number of task labels (1 = regression) for a classification head.
        role: a teacher must already carry the stage's head (a fine-tuned teacher for a task); a
            student may start with a freshly initialised head.
        dtype: the weights' precision.
        random_init: build from the config with random weights instead of loading them.

    Raises:
        ValueError: a teacher without the right head or label count, or (from a checkpoint) one whose
            weights lack tensors that ``from_pretrained`` would have to initialise at random.
    """
    stage = stage_named(stage)
    if isinstance(source, PreTrainedModel):
        model = source
        if not stage.owns(type(model).__name__):
            raise ValueError(
                f"The {role} is a {type(model).__name__}, but {stage.description} needs a {stage.name} head. Build it "
                f"with {stage.auto_class().__name__}."
            )
        _check_labels(model.config, stage, num_labels, role, type(model).__name__)
        return model.to(DTYPES[dtype]) if dtype != "float32" else model

    config = load_config(source)
    carries_head = any(stage.owns(name) for name in getattr(config, "architectures", None) or [])
    if role == "teacher" and not carries_head and not random_init:
        raise ValueError(
            f"The teacher {source!r} has no trained {stage.name} head (architectures={config.architectures}); "
            f"{stage.teacher_hint()}."
        )
    kwargs = {}
    if not stage.token_level and num_labels is not None:
        if role == "teacher":
            _check_labels(config, stage, num_labels, role, source)
        elif carries_head and config.num_labels != num_labels:
            kwargs["ignore_mismatched_sizes"] = True  # a student may re-initialise a head of another size
        config.num_labels = num_labels
    auto = stage.auto_class()
    if random_init:
        return auto.from_config(config, dtype=DTYPES[dtype])
    model, loading_info = auto.from_pretrained(
        resolve_source(source), config=config, dtype=DTYPES[dtype], output_loading_info=True, **kwargs
    )
    if role == "teacher":
        _check_teacher_weights(source, stage, config, loading_info)
    return model


def _check_teacher_weights(source: str, stage: Stage, config, loading_info: dict) -> None:
    """Refuse a teacher whose checkpoint lacks tensors its model needs.

    ``config.json``'s ``architectures`` may claim a head the weights do not have (a config copied or
    edited by hand, a base encoder saved under a task class); ``from_pretrained`` then initialises
    the head at random and a distillation from that random teacher would still run. A student may
    start with such a fresh head; a teacher may not.
    """
    missing = sorted(loading_info.get("missing_keys") or ())
    missing += sorted(str(entry[0] if isinstance(entry, tuple) else entry) for entry in loading_info.get("mismatched_keys") or ())
    if not missing:
        return
    shown = ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
    raise ValueError(
        f"The teacher {source!r} lacks trained weights for {shown}: config.json says {config.architectures}, but "
        f"from_pretrained would initialise these tensors at random, so the teacher's {stage.name} outputs would be "
        f"noise; {stage.teacher_hint()}."
    )


def _check_labels(config, stage: Stage, num_labels: int | None, role: str, name) -> None:
    if not stage.token_level and num_labels is not None and config.num_labels != num_labels:
        raise ValueError(
            f"The {role} {name!r} predicts {config.num_labels} labels but the task has {num_labels} (the data's classes). "
            f"Use a {role} fine-tuned on this task, or, if the data's classes are wrong, list them explicitly with "
            "data.init_args.label_names: [...]."
        )


def enable_activation_checkpointing(model: PreTrainedModel) -> None:
    """Recompute ``model``'s layer activations during the backward pass instead of storing them.

    Non-reentrant checkpointing: it works with frozen inputs and with hooks that capture features,
    and is the variant PyTorch recommends.

    Raises:
        ValueError: the architecture has no activation-checkpointing support in transformers.
    """
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ValueError(
            f"{type(model).__name__} does not support activation checkpointing in transformers; set activation_checkpointing: false."
        )
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 (the old name is deprecated)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def is_activation_checkpointing(model: PreTrainedModel) -> bool:
    """Whether ``model`` recomputes activations in the backward (either transformers spelling, no warning)."""
    flag = "is_activation_checkpointing" if hasattr(type(model), "is_activation_checkpointing") else "is_gradient_checkpointing"
    return bool(getattr(model, flag, False))

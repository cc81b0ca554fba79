"""The stages a distillation runs in, each one object (see :mod:`lightning_kd.stages.base`).

``task_head`` in configs names a stage (the CLI links it from the data module); the library resolves
the name once with :func:`stage_named` and asks the object from then on. :func:`stage_of_class`
tells a built model's or a checkpoint's stage from its class name.
"""

from __future__ import annotations

from typing import Literal

from lightning_kd.stages.base import IGNORE_INDEX, Stage
from lightning_kd.stages.causal_lm import ALIGNED, CausalLM, shift_labels
from lightning_kd.stages.classification import SequenceClassification
from lightning_kd.stages.masked_lm import MaskedLM

#: The names ``task_head`` accepts.
TaskHead = Literal["sequence_classification", "masked_lm", "causal_lm"]
#: name → stage, in the order checkpoints' architectures are matched.
STAGES: dict[str, Stage] = {stage.name: stage for stage in (SequenceClassification(), MaskedLM(), CausalLM())}


def stage_named(name: str | Stage) -> Stage:
    """The stage called ``name`` (a stage object is returned as it is).

    Raises:
        ValueError: no stage has that name.
    """
    if isinstance(name, Stage):
        return name
    if name not in STAGES:
        raise ValueError(f"Unknown task_head {name!r}; choose one of {sorted(STAGES)}.")
    return STAGES[name]


def stage_of_class(class_name: str) -> Stage | None:
    """The stage whose head a class (``BertForMaskedLM``, ``GPT2LMHeadModel``, …) carries, or ``None``
    for a bare model or another head."""
    return next((stage for stage in STAGES.values() if stage.owns(class_name)), None)


def stage_of_architectures(architectures: list[str] | None) -> Stage | None:
    """The stage of the first of a checkpoint's ``architectures`` that carries a known head."""
    return next((stage for name in architectures or [] if (stage := stage_of_class(name)) is not None), None)


__all__ = [
    "ALIGNED",
    "IGNORE_INDEX",
    "STAGES",
    "CausalLM",
    "MaskedLM",
    "SequenceClassification",
    "Stage",
    "TaskHead",
    "shift_labels",
    "stage_named",
    "stage_of_architectures",
    "stage_of_class",
]

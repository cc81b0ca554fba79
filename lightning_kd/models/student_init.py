"""Initialising a student from a teacher's layers (GKD ``--student_truncate_tn``, DistilBERT init).

Weights are matched by parameter name after renaming student layer ``i`` to the chosen teacher
layer, so embeddings, pooler and task head are copied too (the reference skips the head; copying
it gives a truncated student that starts from the teacher's decision layer, which trains faster).
"""

from __future__ import annotations

import copy
import re
from typing import Literal

import torch
from torch import nn
from transformers import PreTrainedModel

from lightning_kd.core.layer_map import uniform_boundaries

LayerSelection = Literal["first", "uniform"]


def select_teacher_layers(selection: LayerSelection | list[int], count: int | None, teacher_layers: int) -> list[int]:
    """0-based teacher layers that initialise the student's layers, in order.

    ``"first"`` takes layers ``0…count−1`` (the GKD default); ``"uniform"`` takes the last layer of
    each uniform segment (12→6: 1,3,5,7,9,11); a list is used as given.
    """
    if isinstance(selection, list):
        bad = [i for i in selection if not 0 <= i < teacher_layers]
        if bad or not selection:
            raise ValueError(
                f"student_layers {selection} must be a non-empty list of 0-based teacher layers in 0..{teacher_layers - 1}."
            )
        return list(selection)
    if count is None or not 1 <= count <= teacher_layers:
        raise ValueError(f"The student needs between 1 and {teacher_layers} layers (the teacher's depth), got {count}.")
    if selection == "first":
        return list(range(count))
    if selection == "uniform":
        return [b - 1 for b in uniform_boundaries(teacher_layers, count)[1:]]
    raise ValueError(f"Unknown layer selection {selection!r}; use 'first', 'uniform' or a list of teacher layers.")


def layer_list_prefix(model: nn.Module) -> str:
    """Dotted name of the ``ModuleList`` holding the encoder layers (e.g. ``bert.encoder.layer``)."""
    depth = model.config.num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == depth and name:
            return name
    raise ValueError(f"Cannot find the encoder layer list of {type(model).__name__}.")


def copy_teacher_weights(
    teacher: PreTrainedModel, student: PreTrainedModel, layers: list[int], allow_width_truncation: bool = False
) -> None:
    """Copy teacher weights into ``student`` in place; student layer ``i`` ← teacher layer ``layers[i]``.

    Raises:
        ValueError: a shape differs and ``allow_width_truncation`` is off, or the layer count is wrong.
    """
    if len(layers) != student.config.num_hidden_layers:
        raise ValueError(f"{len(layers)} teacher layers given for a student with {student.config.num_hidden_layers} layers.")
    s_prefix, t_prefix = layer_list_prefix(student), layer_list_prefix(teacher)
    pattern = re.compile(rf"^{re.escape(s_prefix)}\.(\d+)\.(.*)$")
    teacher_state = teacher.state_dict()
    with torch.no_grad():
        for name, tensor in student.state_dict().items():
            match = pattern.match(name)
            source = f"{t_prefix}.{layers[int(match.group(1))]}.{match.group(2)}" if match else name
            if source not in teacher_state:
                continue
            value = teacher_state[source]
            if value.shape != tensor.shape:
                if not allow_width_truncation:
                    raise ValueError(
                        f"Teacher {source} has shape {tuple(value.shape)} but student {name} has {tuple(tensor.shape)}; "
                        "copying teacher layers needs equal widths (set allow_width_truncation=True to copy the leading slice)."
                    )
                value = value[tuple(slice(0, min(a, b)) for a, b in zip(value.shape, tensor.shape))]
                tensor[tuple(slice(0, n) for n in value.shape)].copy_(value)
            else:
                tensor.copy_(value)


def truncated_copy(teacher: PreTrainedModel, layers: list[int]) -> PreTrainedModel:
    """A new model of the teacher's class and width whose layers are copies of ``layers``."""
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = len(layers)
    student = type(teacher)(config).to(next(teacher.parameters()).dtype)
    copy_teacher_weights(teacher, student, layers)
    return student.float()

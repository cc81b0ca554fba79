"""Initialising a student from a teacher's layers (GKD ``--student_truncate_tn``, DistilBERT init).

Weights are matched by parameter name after renaming student layer ``i`` to the chosen teacher
layer, so embeddings, pooler and task head are copied too (the reference skips the head; copying
it gives a truncated student that starts from the teacher's decision layer, which trains faster).
Layer lists are found per family (:mod:`lightning_kd.models.layer_stack`) and per-layer config
fields are trimmed to the copied layers (:mod:`lightning_kd.models.layer_config`); a copy that
would leave student tensors random (another family) is refused.
"""

from __future__ import annotations

import copy

import re
from typing import Literal

import torch
from torch import nn
from transformers import PreTrainedModel

from lightning_kd.core.layer_map import uniform_boundaries
from lightning_kd.models.layer_config import layer_fields_at, per_layer_fields, trimmed_config
from lightning_kd.models.layer_stack import LayerStack, LayerStackNotFound, family_of, find_layer_stack

LayerSelection = Literal["first", "uniform", "first_last"]


def select_teacher_layers(selection: LayerSelection | list[int], count: int | None, teacher_layers: int) -> list[int]:
    """0-based teacher layers that initialise the student's layers, in order.

    ``"first"`` takes layers ``0…count−1`` (the GKD default); ``"uniform"`` takes the last layer of
    each uniform segment (12→6: 1,3,5,7,9,11); ``"first_last"`` takes the first ``⌊count/2⌋`` and the
    last ``⌈count/2⌉`` layers, two contiguous blocks that keep both ends of the network (30→15: 0…6
    and 22…29; for a decoder LM far closer to the teacher at the start than every other layer); a
    list is used as given.
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
    if selection == "first_last":
        head = count // 2
        return list(range(head)) + list(range(teacher_layers - (count - head), teacher_layers))
    raise ValueError(f"Unknown layer selection {selection!r}; use 'first', 'uniform', 'first_last' or a list of teacher layers.")


_NO_COPY_FIX = "use student_init: pretrained or random (the student keeps its own or fresh weights)"


def layer_list_prefix(model: nn.Module) -> str:
    """Dotted state-dict name of the model's layer list (e.g. ``bert.encoder.layer``)."""
    return _stack(model).prefix


def _stack(model: nn.Module) -> LayerStack:
    try:
        return find_layer_stack(model)
    except LayerStackNotFound as error:
        raise LayerStackNotFound(f"{error} Layers cannot be copied from or into it; {_NO_COPY_FIX}.") from None


def _base_prefix(model: PreTrainedModel) -> str:
    """State-dict prefix of the base model (``"bert."``); names outside it are the task head."""
    prefix = getattr(model, "base_model_prefix", "")
    return f"{prefix}." if prefix and getattr(model, "base_model", model) is not model else ""


def _check_layer_fields(teacher: PreTrainedModel, student: PreTrainedModel, layers: list[int]) -> None:
    """Each student layer must have the per-layer config (attention type, …) of the teacher layer it copies."""
    for position, layer in enumerate(layers):
        mine, theirs = layer_fields_at(student.config, position), layer_fields_at(teacher.config, layer)
        for name in mine.keys() & theirs.keys():
            if mine[name] != theirs[name]:
                wanted = [per_layer_fields(teacher.config)[name][i] for i in layers]
                raise ValueError(
                    f"{family_of(student)}: student layer {position} has {name} {mine[name]!r} but the teacher layer it "
                    f"copies ({layer}) has {theirs[name]!r}, so the copied weights would run as another kind of layer. Omit "
                    f"`student` to build the student from the teacher (it keeps each layer's type), or give the student "
                    f"{name}={wanted}."
                )


def _check_layer_indices(teacher: PreTrainedModel, student: PreTrainedModel, layers: list[int]) -> None:
    """GPT-2 can scale attention by its layer index; a copied layer must then keep its index."""
    scaled = [bool(getattr(m.config, "scale_attn_by_inverse_layer_idx", False)) for m in (teacher, student)]
    if any(scaled) and (scaled[0] != scaled[1] or layers != list(range(len(layers)))):
        raise ValueError(
            f"{family_of(teacher)} with scale_attn_by_inverse_layer_idx scales each layer's attention by 1/(index+1), "
            f"so teacher layers {layers} would compute differently at student positions 0..{len(layers) - 1}. Use "
            "student_init: teacher_first (every layer keeps its index) with the same setting in both configs."
        )


def _slot_sources(teacher: LayerStack, student: LayerStack, layers: list[int], who: str) -> dict[int, int]:
    """``{student slot: teacher slot}``: every student slot must copy exactly one teacher slot."""
    sources: dict[int, set[int]] = {}
    for position, layer in enumerate(layers):
        sources.setdefault(student.slots[position], set()).add(teacher.slots[layer])
    for slot, taken in sorted(sources.items()):
        if len(taken) > 1:
            runs = [student.slots[p] for p in range(len(layers))]
            raise ValueError(
                f"{who}: student layer group {slot} is shared by several layers (groups per layer: {runs}), but the teacher "
                f"layers they copy ({layers}) run different teacher groups {sorted(taken)}, so one set of weights cannot "
                "be both. Give the student one group per layer (num_hidden_groups = num_hidden_layers), choose teacher "
                "layers of one group per student group, or omit `student` to build it from the teacher."
            )
    return {slot: taken.pop() for slot, taken in sources.items()}


def copy_teacher_weights(
    teacher: PreTrainedModel, student: PreTrainedModel, layers: list[int], allow_width_truncation: bool = False
) -> None:
    """Copy teacher weights into ``student`` in place; student layer ``i`` ← teacher layer ``layers[i]``.

    Tensors are matched by state-dict name after renaming the student's layer-list entry to the
    teacher's (through each model's :class:`~lightning_kd.models.layer_stack.LayerStack`, so ALBERT's
    shared groups map group to group). Every student tensor outside the task head must find its
    teacher tensor: a student of another family (BERT → DistilBERT, MPNet → BERT) matches few or
    none and is refused rather than left mostly random.

    Raises:
        ValueError: the layer count is wrong; the student's tensors do not all match the teacher's;
            a shape differs and ``allow_width_truncation`` is off; a student layer's per-layer config
            (attention type) differs from the layer it copies; a shared ALBERT group would need two
            different teacher groups; GPT-2 index-scaled attention would change meaning.
        LayerStackNotFound: either model's layer list cannot be found.
    """
    if len(layers) != student.config.num_hidden_layers:
        raise ValueError(f"{len(layers)} teacher layers given for a student with {student.config.num_hidden_layers} layers.")
    s_stack, t_stack = _stack(student), _stack(teacher)
    who = f"Copying {family_of(teacher)} layers into {family_of(student)}"
    slot_source = _slot_sources(t_stack, s_stack, layers, who)
    pattern = re.compile(rf"^{re.escape(s_stack.prefix)}\.(\d+)\.(.*)$")
    teacher_state = teacher.state_dict()
    base = _base_prefix(student)

    plan: list[tuple[str, str]] = []  # (student name, teacher name)
    counted = matched = layer_count = layer_matched = 0
    missing: list[str] = []
    for name in student.state_dict():
        match = pattern.match(name)
        source = f"{t_stack.prefix}.{slot_source[int(match.group(1))]}.{match.group(2)}" if match else name
        found = source in teacher_state
        if found:
            plan.append((name, source))
        if not name.startswith(base):
            continue  # the task head: copied when it matches, not counted
        counted += 1
        matched += found
        layer_count += bool(match)
        layer_matched += bool(match) and found
        if not found:
            missing.append(name)
    if missing:
        raise ValueError(
            f"{who} matched {matched} of {counted} student tensors ({layer_matched} of {layer_count} layer tensors; the "
            f"task head is not counted), e.g. no teacher tensor for {', '.join(missing[:3])}. The rest would stay "
            "randomly initialised. Use a student of the teacher's family (omit `student` and student_init: teacher_* "
            f"builds one), or {_NO_COPY_FIX}."
        )
    _check_layer_fields(teacher, student, layers)
    _check_layer_indices(teacher, student, layers)

    student_state = student.state_dict()
    with torch.no_grad():
        for name, source in plan:
            tensor, value = student_state[name], teacher_state[source]
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


def _shared_groups(teacher: PreTrainedModel, stack: LayerStack, layers: list[int]) -> int:
    """``num_hidden_groups`` of an ALBERT student made of teacher ``layers``.

    The student's layer ``i`` runs group ``int(i / (L_S / G_S))``: equal consecutive runs. The
    chosen layers' teacher groups must fall into such runs, one teacher group per run.
    """
    groups = [stack.slots[layer] for layer in layers]
    runs = [0]
    for previous, current in zip(groups, groups[1:]):
        runs.append(runs[-1] + (current != previous))
    count = runs[-1] + 1
    if runs != [int(i / (len(layers) / count)) for i in range(len(layers))]:
        raise ValueError(
            f"{family_of(teacher)} shares layer groups: teacher layers {layers} run groups {groups}, which an ALBERT "
            f"student of {len(layers)} layers cannot reproduce (it gives each group an equal run of consecutive "
            "layers). Choose teacher layers whose groups form equal runs (student_init: teacher_first or "
            f"teacher_uniform usually do), or {_NO_COPY_FIX}."
        )
    return count


def truncated_copy(teacher: PreTrainedModel, layers: list[int]) -> PreTrainedModel:
    """A new model of the teacher's class and width whose layers are copies of ``layers``.

    Every per-layer config field (``layer_types``, …) is cut to the chosen layers, so each copied
    layer keeps its attention type and the config validates when reloaded; the layers are built at
    their new positions, so per-layer indices (``layer_idx``, used by caches) run 0…len(layers)−1.
    An ALBERT teacher's shared groups are copied as groups: the student applies the same weights
    fewer times.
    """
    stack = _stack(teacher)
    config = trimmed_config(teacher.config, layers)
    if getattr(config, "num_hidden_groups", None):
        config.num_hidden_groups = _shared_groups(teacher, stack, layers)
    student = type(teacher)(config).to(next(teacher.parameters()).dtype)
    copy_teacher_weights(teacher, student, layers)
    if getattr(teacher, "generation_config", None) is not None and getattr(student, "generation_config", None) is not None:
        # A decoder student generates as its teacher does (EOS, pad, sampling defaults) and exports so.
        student.generation_config = copy.deepcopy(teacher.generation_config)
    return student.float()

"""The hybrid encoder of BERT-of-Theseus: student layers and frozen teacher blocks in one forward.

The teacher's ``L_T`` layers are cut into ``L_S`` contiguous blocks ``B_k`` by the GKD segmentation
(:func:`~lightning_kd.core.layer_map.uniform_boundaries`; 12→6: ``[0,1], [2,3], …``; 12→5:
``[0,1,2], [3,4,5], [6,7,8], [9,10], [11]``). A *layout* says, for each student position ``k``,
whether student layer ``k`` runs (``None``) or teacher ``t``'s block ``B_k`` (the int ``t``).

:func:`hybrid_layers` runs the student's own forward — its embeddings, attention-mask building,
pooler, head and task loss — with the encoder's layer list shadowed, for the duration of one call,
by a plain Python list holding the chosen modules. Nothing is registered as a submodule, so the
student's parameters, state dict and export never contain a teacher module. Teacher layers run in
eval mode (the module keeps teachers in eval) and have ``requires_grad=False``; gradients still flow
*through* their activations into the student layers and embeddings below them.

A teacher block is called exactly as the student's encoder calls its own layer at that position
(:class:`~lightning_kd.models.theseus_block.TeacherBlock`), for every family in
:data:`~lightning_kd.models.theseus_families.HYBRID_FAMILIES`; what cannot be swapped correctly is
refused when the method is built (:func:`check_hybrid_compatible`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import torch
from torch import nn
from transformers import PreTrainedModel

from lightning_kd.core.layer_map import uniform_boundaries
from lightning_kd.models.layer_stack import LayerStack, LayerStackNotFound, family_of, find_layer_stack
from lightning_kd.models.theseus_block import TeacherBlock
from lightning_kd.models.theseus_families import check_family

LayoutGuard = Literal["at_least_one_student", "reference"]
Layout = list[int | None]


def teacher_blocks(teacher_depth: int, student_depth: int) -> list[list[int]]:
    """0-based teacher layers of each block ``B_k``, ``k = 0…L_S−1`` (the GKD segmentation)."""
    bounds = uniform_boundaries(teacher_depth, student_depth)
    return [list(range(bounds[k], bounds[k + 1])) for k in range(student_depth)]


def sample_student_positions(rate: float, positions: int, generator: torch.Generator, guard: LayoutGuard) -> list[bool]:
    """Which positions use their student layer: each independently with probability ``rate``.

    Args:
        rate: the replacing rate ``p`` (probability of the student module); values ≥ 1 mean all
            student, ≤ 0 all teacher (before the guard).
        positions: the student's depth ``L_S``.
        generator: source of randomness (seeded per step so DDP ranks agree).
        guard: ``"at_least_one_student"`` draws from the layout distribution *conditioned* on at least
            one student position (what resampling the whole layout until one appears converges to,
            without a loop: the first student position ``j`` has probability ∝ ``(1−p)^j·p``, later
            positions stay independent; at ``p = 0`` it is uniform). ``"reference"`` keeps the first
            draw, as the GKD code effectively does (its resampling never resets the list, so an
            all-teacher layout still happens with probability ``(1−p)^{L_S}``).
    """
    if guard not in ("at_least_one_student", "reference"):
        raise ValueError(f"guard must be 'at_least_one_student' or 'reference', got {guard!r}.")
    p = min(max(float(rate), 0.0), 1.0)
    draws = (torch.rand(positions, generator=generator) < p).tolist()
    if guard == "reference" or any(draws):
        return draws
    if p == 0.0:
        first = int(torch.randint(positions, (1,), generator=generator))
    else:
        weights = torch.tensor([(1.0 - p) ** j * p for j in range(positions)], dtype=torch.float64)
        first = int(torch.multinomial(weights, 1, generator=generator))
    tail = (torch.rand(positions, generator=generator) < p).tolist()
    return [j == first or (j > first and tail[j]) for j in range(positions)]


def _stack(model: nn.Module, role: str) -> LayerStack:
    try:
        return find_layer_stack(model)
    except LayerStackNotFound as error:
        raise LayerStackNotFound(
            f"{error} Theseus swaps entries of that list, so the {role} cannot take part; distil with a method that "
            "does not swap layers (KD, TinyBERT, MiniLM, …)."
        ) from None


def check_hybrid_compatible(student: PreTrainedModel, teachers: Sequence[PreTrainedModel]) -> None:
    """Raise ``ValueError`` unless every teacher's blocks can be chained into the student.

    Width, depth and attention implementation are checked for every family; what a family's
    encoder loop needs besides (same family, matching rotary/relative-position settings, per-layer
    attention types of each block, unshared student layers) is checked by
    :func:`~lightning_kd.models.theseus_families.check_family`.
    """
    s_config = student.config
    s_stack = _stack(student, "student")
    for index, teacher in enumerate(teachers):
        t_config = teacher.config
        if t_config.hidden_size != s_config.hidden_size:
            raise ValueError(
                f"Theseus chains teacher layers into the student, so teacher {index}'s width ({t_config.hidden_size}) must "
                f"equal the student's ({s_config.hidden_size}). Initialise the student from the teacher "
                "(student_init: teacher_first) or use a teacher of the student's width."
            )
        if t_config.num_hidden_layers < s_config.num_hidden_layers:
            raise ValueError(
                f"Teacher {index} has {t_config.num_hidden_layers} layers, fewer than the student's {s_config.num_hidden_layers}; "
                "each student layer replaces a block of at least one teacher layer."
            )
        s_impl = getattr(s_config, "_attn_implementation", None)
        t_impl = getattr(t_config, "_attn_implementation", None)
        if s_impl != t_impl:
            raise ValueError(
                f"The student uses attention implementation {s_impl!r} and teacher {index} {t_impl!r}; teacher layers "
                "run on the student's attention mask, so both must use the same one (load them alike, or set "
                "config._attn_implementation on the built models)."
            )
        t_stack = _stack(teacher, f"teacher {index}")
        check_family(student, teacher, index, s_stack, teacher_blocks(t_stack.depth, s_stack.depth))


def layout_modules(student: nn.Module, teachers: Sequence[nn.Module], layout: Layout) -> list:
    """The student's layer list with teacher blocks in place of the positions ``layout`` replaces."""
    s_stack = find_layer_stack(student)
    depth = s_stack.depth
    if len(layout) != depth:
        raise ValueError(f"A layout needs one entry per student layer ({depth}), got {len(layout)}.")
    if s_stack.shared and any(choice is not None for choice in layout):
        raise ValueError(f"{family_of(student)} shares layer modules between positions; Theseus cannot swap one of them.")
    modules: list = list(s_stack.modules)
    for position, choice in enumerate(layout):
        if choice is None:
            continue
        teacher = teachers[choice]
        t_stack = find_layer_stack(teacher)
        block = teacher_blocks(t_stack.depth, depth)[position]
        modules[s_stack.slots[position]] = TeacherBlock(
            [t_stack.module_at(j) for j in block], next(teacher.parameters()).dtype, s_stack.module_at(position)
        )
    return modules


@contextmanager
def hybrid_layers(student: nn.Module, teachers: Sequence[nn.Module], layout: Layout) -> Iterator[None]:
    """Within the block, calling ``student`` runs the hybrid stack of ``layout``.

    The encoder's registered ``ModuleList`` is untouched: a plain list is placed in the owner's
    instance ``__dict__`` (which attribute lookup consults before ``nn.Module``'s submodule table)
    and removed on exit, even on error.
    """
    if all(choice is None for choice in layout):
        yield  # the pure student
        return
    stack = find_layer_stack(student)
    stack.owner.__dict__[stack.attribute] = layout_modules(student, teachers, layout)
    try:
        yield
    finally:
        stack.owner.__dict__.pop(stack.attribute, None)

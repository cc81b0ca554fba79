"""Checks a method can only make once its whole constructor chain has run.

A method sets what it reads (its feature requests, layer maps, stages) *after* calling the base
constructor, so the checks that depend on those requests cannot run inside the base constructor.
:class:`ChecksAfterConstruction` calls the method's ``check_construction`` when the outermost
constructor returns; :func:`check_attention_requests` is the base's check: the attention a method
reads must be readable, and compared layers must attend alike.
"""

from __future__ import annotations

from typing import Any

from lightning_kd.core.attention_capture import check_attention_layers


class ChecksAfterConstruction(type):
    """Metaclass: runs ``instance.check_construction()`` once the *whole* constructor chain is done,
    so a subclass's requests (set after ``super().__init__``) are known before any training step."""

    def __call__(cls, *args, **kwargs):
        instance = super().__call__(*args, **kwargs)
        instance.check_construction()
        return instance


def check_attention_requests(method: Any) -> None:
    """Refuse models whose attention ``method`` cannot read exactly.

    Attention is read from transformers' attention interface (:mod:`lightning_kd.core.attention_capture`):
    a family that computes attention elsewhere, an attention layer out of range, or a student and
    teacher whose compared layers attend differently (causal vs bidirectional, other windows) is an
    error naming the family and the fix.

    Args:
        method: a built method: ``student``, ``teachers``, ``student_request()`` and ``teacher_request(i)``.

    Raises:
        ValueError: naming the model, the layers and what to change.
    """
    name = type(method).__name__
    student_layers = method.student_request().hooked_layers
    student = check_attention_layers(method.student, student_layers, "student", name) if student_layers else None
    for index, teacher in enumerate(method.teachers):
        layers = method.teacher_request(index).hooked_layers
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

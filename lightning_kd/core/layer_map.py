"""Student ↔ teacher layer mappings.

Layers are named by *hidden-state index*: 0 is the embedding output and ``j`` (1…L) the output of
layer ``j`` (HF ``outputs.hidden_states[j]``). A layer map assigns each student layer
``j = 1…L_S`` one teacher hidden-state index; attention-level methods pair student layer ``j−1``
(0-based) with teacher layer ``map[j−1] − 1``.

``"uniform"`` reproduces the GKD splitter: teacher layers are cut into ``L_S`` contiguous segments
whose sizes are ``ceil(L_T/L_S)`` while enough layers remain, so non-divisible depths front-load
the larger segments (12→5: sizes 3,3,3,2,1; boundaries 0,3,6,9,11,12).
"""

from __future__ import annotations

import math
from typing import Literal, Union

LayerMapName = Literal["uniform", "first", "last"]
LayerMap = Union[LayerMapName, list[int]]


def uniform_boundaries(teacher_layers: int, student_layers: int) -> list[int]:
    """Segment boundaries ``b_0=0 < … < b_{L_S}=L_T`` of the GKD greedy splitter."""
    if not 1 <= student_layers <= teacher_layers:
        raise ValueError(
            f"Cannot map {student_layers} student layers onto {teacher_layers} teacher layers: "
            "the student needs between 1 and the teacher's number of layers."
        )
    size = math.ceil(teacher_layers / student_layers)
    boundaries, remaining = [0], teacher_layers
    for segment in range(student_layers):
        segments_after = student_layers - segment - 1
        take = min(size, remaining - segments_after)
        boundaries.append(boundaries[-1] + take)
        remaining -= take
    return boundaries


def resolve_layer_map(layer_map: LayerMap, teacher_layers: int, student_layers: int) -> list[int]:
    """Teacher hidden-state index for each student layer ``1…L_S`` (a list of length ``L_S``).

    Args:
        layer_map: ``"uniform"`` (GKD boundaries), ``"first"`` (teacher layers 1…L_S), ``"last"``
            (the last L_S teacher layers) or an explicit list of teacher hidden-state indices.
        teacher_layers: teacher depth ``L_T``.
        student_layers: student depth ``L_S``.

    Raises:
        ValueError: unknown name, wrong list length, or an index outside ``1…L_T``.
    """
    if isinstance(layer_map, str):
        if student_layers > teacher_layers and layer_map != "uniform":
            raise ValueError(f"layer_map={layer_map!r} needs student_layers <= teacher_layers ({student_layers} > {teacher_layers}).")
        if layer_map == "uniform":
            return uniform_boundaries(teacher_layers, student_layers)[1:]
        if layer_map == "first":
            return list(range(1, student_layers + 1))
        if layer_map == "last":
            return list(range(teacher_layers - student_layers + 1, teacher_layers + 1))
        raise ValueError(f"Unknown layer_map {layer_map!r}; use 'uniform', 'first', 'last' or a list of teacher layers.")
    mapping = [int(i) for i in layer_map]
    if len(mapping) != student_layers:
        raise ValueError(
            f"layer_map lists {len(mapping)} teacher layers but the student has {student_layers} layers; "
            "give exactly one teacher hidden-state index (1-based) per student layer."
        )
    bad = [i for i in mapping if not 1 <= i <= teacher_layers]
    if bad:
        raise ValueError(
            f"layer_map entries {bad} are out of range: the teacher has layers 1..{teacher_layers} "
            "(0 is the embedding output, which every method pairs separately)."
        )
    return mapping


def hidden_state_pairs(mapping: list[int], include_embeddings: bool = True) -> list[tuple[int, int]]:
    """``(student_index, teacher_index)`` hidden-state pairs, embeddings first when asked."""
    pairs = [(j + 1, t) for j, t in enumerate(mapping)]
    return [(0, 0), *pairs] if include_embeddings else pairs


def attention_pairs(mapping: list[int]) -> list[tuple[int, int]]:
    """``(student_layer, teacher_layer)`` 0-based attention pairs: layer ``j`` ↔ ``map[j] − 1``."""
    return [(j, t - 1) for j, t in enumerate(mapping)]

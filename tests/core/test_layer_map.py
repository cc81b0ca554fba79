"""Layer maps reproduce the spec's tables (GKD greedy splitter) and reject bad maps."""

from __future__ import annotations

import pytest

from lightning_kd.core.layer_map import attention_pairs, hidden_state_pairs, resolve_layer_map, uniform_boundaries
from lightning_kd.models.student_init import select_teacher_layers


@pytest.mark.parametrize(
    "teacher, student, boundaries",
    [
        (12, 6, [0, 2, 4, 6, 8, 10, 12]),
        (12, 4, [0, 3, 6, 9, 12]),
        (24, 6, [0, 4, 8, 12, 16, 20, 24]),
        (12, 5, [0, 3, 6, 9, 11, 12]),
        (12, 7, [0, 2, 4, 6, 8, 10, 11, 12]),
        (24, 10, [0, 3, 6, 9, 12, 15, 18, 21, 22, 23, 24]),
        (6, 3, [0, 2, 4, 6]),
    ],
)
def test_uniform_boundaries_match_spec_table(teacher, student, boundaries):
    assert uniform_boundaries(teacher, student) == boundaries


def test_pairs_for_12_to_6():
    mapping = resolve_layer_map("uniform", 12, 6)
    assert hidden_state_pairs(mapping) == [(0, 0), (1, 2), (2, 4), (3, 6), (4, 8), (5, 10), (6, 12)]
    assert [t for _, t in attention_pairs(mapping)] == [1, 3, 5, 7, 9, 11]


def test_named_and_explicit_maps():
    assert resolve_layer_map("first", 12, 3) == [1, 2, 3]
    assert resolve_layer_map("last", 12, 3) == [10, 11, 12]
    assert resolve_layer_map([4, 8, 12], 12, 3) == [4, 8, 12]


@pytest.mark.parametrize(
    "layer_map, message",
    [([1, 2], "exactly one"), ([0, 5, 13], "out of range"), ("middle", "Unknown layer_map")],
)
def test_bad_maps_are_rejected_with_the_fix(layer_map, message):
    with pytest.raises(ValueError, match=message):
        resolve_layer_map(layer_map, 12, 3)


def test_student_initialisation_layer_choices():
    assert select_teacher_layers("first", 3, 6) == [0, 1, 2]
    assert select_teacher_layers("uniform", 3, 6) == [1, 3, 5]
    assert select_teacher_layers("uniform", 6, 12) == [1, 3, 5, 7, 9, 11]
    with pytest.raises(ValueError, match="between 1 and 6"):
        select_teacher_layers("first", 7, 6)

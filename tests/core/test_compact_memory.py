"""The memory estimate counts the logit rows each model computes with compact heads."""

from __future__ import annotations

import pytest

from lightning_kd.core import memory
from lightning_kd.methods import KD, TinyBERT
from tests.conftest import make_tiny_bert


def _pair():
    return {"teacher": make_tiny_bert("mlm", seed=1), "student": make_tiny_bert("mlm", seed=2, layers=2, hidden=16)}


def test_logits_count_only_the_rows_each_model_computes():
    b, n, vocab = 8, 64, 220
    kd = KD(**_pair())
    encoder = memory.student_activations(TinyBERT(**_pair()), b, n, 4)  # rows "none": no logits at all
    labelled = memory.student_activations(kd, b, n, 4, labelled_share=0.25)
    assert labelled - encoder == pytest.approx(b * n * 0.25 * vocab * 4 * 3)
    kd.compact_heads = False
    assert memory.student_activations(kd, b, n, 4) - encoder == pytest.approx(b * n * vocab * 4 * 3)
    teacher_full = memory.teacher_activations(kd, 0, b, n)
    kd.compact_heads = True
    assert teacher_full - memory.teacher_activations(kd, 0, b, n) == pytest.approx(b * n * 0.85 * vocab * 4)

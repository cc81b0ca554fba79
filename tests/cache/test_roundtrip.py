"""Cache round trip: the loss terms computed from a filled cache equal the live teacher's, and
reading never runs the teacher."""

from __future__ import annotations

import pytest
import torch

from lightning_kd.cache import TeacherCache
from lightning_kd.losses.prediction import PredictionLoss
from lightning_kd.methods import KD, MiniLM, TinyBERT
from tests.cache import StubData, count_forwards, indexed_batches
from tests.conftest import make_tiny_bert


def _losses(method, batches):
    out = []
    for batch in batches:
        torch.manual_seed(0)  # same dropout with and without the cache
        out.append({name: value.detach() for name, value in method.compute_losses(batch).items()})
    return out


def _round_trip(method, kind, tmp_path, cache: TeacherCache, tolerance=(1e-6, 1e-7)):
    """Fill ``cache`` for ``method``, then compare every term with and without it; return the terms."""
    batches = indexed_batches(kind)
    data = StubData(batches)
    assert cache.fill(method, data) == sum(len(b["input_ids"]) for b in batches)
    cache.open(method, data)
    with count_forwards(method.teachers[0]) as calls:
        cached = _losses(method, batches)
    assert calls[0] == 0, "a fully cached batch must not run the teacher"
    method.teacher_cache = None
    live = _losses(method, batches)
    rtol, atol = tolerance
    for from_cache, from_teacher in zip(cached, live):
        assert from_cache.keys() == from_teacher.keys()
        for name, value in from_teacher.items():
            torch.testing.assert_close(from_cache[name], value, rtol=rtol, atol=atol, msg=name)
    return live


def _students(kind):
    return make_tiny_bert(kind, seed=1), make_tiny_bert(kind, seed=2, layers=2, hidden=16)


def test_kd_classification_logits(tmp_path):
    teacher, student = _students("classification")
    method = KD(teacher=teacher, student=student, prediction=PredictionLoss(temperature=2.0), teacher_cache=TeacherCache(path=str(tmp_path), verify_batches=0))
    terms = _round_trip(method, "classification", tmp_path, method.teacher_cache)
    assert terms[0]["soft"] > 0
    assert (tmp_path / "teacher0" / "manifest.json").is_file()


@pytest.mark.parametrize("dtype, tolerance", [("float32", (1e-6, 1e-7)), ("float16", (2e-2, 1e-3))])
def test_tinybert_hidden_states_and_attention_scores(tmp_path, dtype, tolerance):
    teacher, student = _students("classification")
    cache = TeacherCache(path=str(tmp_path), dtype=dtype, verify_batches=0)
    method = TinyBERT(teacher=teacher, student=student, teacher_cache=cache)
    terms = _round_trip(method, "classification", tmp_path, cache, tolerance)
    assert {"hidden", "attention"} <= set(terms[0])


def test_minilm_queries_keys_values(tmp_path):
    teacher, student = make_tiny_bert(seed=1), make_tiny_bert(seed=2, layers=2, hidden=16)
    cache = TeacherCache(path=str(tmp_path), dtype="float32", verify_batches=0)
    method = MiniLM(teacher=teacher, student=student, mask_padding=True, teacher_cache=cache)
    terms = _round_trip(method, "classification", tmp_path, cache)
    assert {"attention", "value_relation"} <= set(terms[0])


def test_mlm_kd_with_full_logits(tmp_path):
    teacher, student = _students("mlm")
    cache = TeacherCache(path=str(tmp_path), top_k=None, verify_batches=0)
    method = KD(teacher=teacher, student=student, prediction=PredictionLoss(temperature=2.0), teacher_cache=cache)
    _round_trip(method, "mlm", tmp_path, cache)


def test_a_cold_cache_trains_like_a_warm_one_and_the_check_passes(tmp_path):
    """Filling batches return what the cache stores, so the step does not depend on the cache's state."""
    teacher, student = _students("mlm")
    cache = TeacherCache(path=str(tmp_path), top_k=8, verify_batches=2)
    method = KD(teacher=teacher, student=student, prediction=PredictionLoss(temperature=2.0), teacher_cache=cache)
    batches = indexed_batches("mlm")
    data = StubData(batches)
    cache.open(method, data)
    with count_forwards(method.teachers[0]) as calls:
        cold = _losses(method, batches)  # fills (and checks the first two batches against the live teacher)
    assert calls[0] == 1 + len(batches), "one probe for the stored shapes, then one live forward per batch"
    cache.commit()
    cache.open(method, data)
    with count_forwards(method.teachers[0]) as calls:
        warm = _losses(method, batches)
    assert calls[0] == 2, "only the checked batches run the teacher again"
    for a, b in zip(cold, warm):
        for name in a:
            torch.testing.assert_close(a[name], b[name], msg=name)


def test_forward_repeats_read_rows_appended_in_the_same_step(tmp_path):
    teacher, student = _students("classification")
    cache = TeacherCache(path=str(tmp_path), verify_batches=0)
    method = KD(teacher=teacher, student=student, forward_repeats=2, teacher_cache=cache)
    batch = indexed_batches(count=1)[0]
    cache.open(method, StubData([batch]))
    with count_forwards(method.teachers[0]) as calls:
        method.compute_losses(batch)
    assert calls[0] == 2, "the probe and pass 0; the repeats read what pass 0 appended"


def test_top_k_logits_with_a_logit_mse_are_refused(tmp_path):
    teacher, student = _students("mlm")
    cache = TeacherCache(path=str(tmp_path), top_k=8)
    method = KD(teacher=teacher, student=student, prediction=PredictionLoss(hard_weight=0.0, soft_loss="mse"), teacher_cache=cache)
    batches = indexed_batches("mlm", count=1)
    cache.open(method, StubData(batches))
    with pytest.raises(ValueError, match=r"term 'soft'.*top_k: null"):
        method.compute_losses(batches[0])

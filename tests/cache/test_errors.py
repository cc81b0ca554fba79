"""Where a cache cannot be right it is refused with a message that names the problem and the fix;
several teachers get one cache directory each."""

from __future__ import annotations

import pytest
import torch

from lightning_kd.cache import CacheMismatchError, TeacherCache
from lightning_kd.core.features import FeatureRequest
from lightning_kd.core.random_inputs import RandomInputs
from lightning_kd.data import PretrainDataModule
from lightning_kd.losses.prediction import PredictionLoss
from lightning_kd.methods import KD, MiniLM, Theseus
from tests.cache import StubData, count_forwards, indexed_batches
from tests.conftest import make_tiny_bert


def _pair(kind="classification"):
    return {"teacher": make_tiny_bert(kind, seed=1), "student": make_tiny_bert(kind, seed=2, layers=2, hidden=16)}


@pytest.mark.parametrize("kwargs, match", [
    ({"top_k": 0}, "top_k must be >= 1"),
    ({"dtype": "int8"}, "dtype must be one of float16, bfloat16, float32"),
    ({"verify_batches": -1}, "verify_batches must be >= 0"),
])
def test_invalid_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TeacherCache(**kwargs)


def test_a_batch_without_example_index(tmp_path):
    cache = TeacherCache(path=str(tmp_path))
    method = KD(**_pair(), teacher_cache=cache)
    batch = indexed_batches(count=1)[0]
    cache.open(method, StubData([batch]))
    del batch["example_index"]
    with pytest.raises(ValueError, match="the data module must emit example_index; GlueDataModule and PretrainDataModule do"):
        method.compute_losses(batch)


def test_dynamic_masking_is_refused_naming_masking_seed(tmp_path, tiny_tokenizer_dir):
    cache = TeacherCache(path=str(tmp_path))
    method = KD(**_pair("mlm"), teacher_cache=cache)
    data = PretrainDataModule(str(tiny_tokenizer_dir), train_files=[str(tmp_path / "corpus.txt")])
    with pytest.raises(ValueError, match=r"masking_seed is None.*Set data.init_args.masking_seed"):
        cache.open(method, data)


def test_random_inputs_are_refused_when_the_method_is_built(tmp_path):
    with pytest.raises(ValueError, match="teacher_cache cannot be combined with random_inputs"):
        KD(**_pair(), forward_repeats=1, random_inputs=RandomInputs(mode="dual", passes=[1]),
           teacher_cache=TeacherCache(path=str(tmp_path)))


def test_a_method_whose_teacher_never_runs_alone_is_refused(tmp_path):
    teacher = make_tiny_bert(seed=1)
    with pytest.raises(ValueError, match="Theseus cannot use a teacher cache"):
        Theseus(teacher=teacher, student=make_tiny_bert(seed=2, layers=2), teacher_cache=TeacherCache(path=str(tmp_path)))


def test_outside_a_trainer_the_cache_must_be_opened(tmp_path):
    method = KD(**_pair(), teacher_cache=TeacherCache(path=str(tmp_path)))
    with pytest.raises(ValueError, match=r"call cache.open\(method, data_module\) first"):
        method.compute_losses(indexed_batches(count=1)[0])
    with pytest.raises(ValueError, match="give path="):
        TeacherCache().open(method, StubData(indexed_batches(count=1)))


@pytest.mark.parametrize("build, term", [
    (lambda cache: KD(**_pair("mlm"), prediction=PredictionLoss(soft_positions="all_positions"), teacher_cache=cache), "soft"),
    (lambda cache: MiniLM(**_pair(), teacher_cache=cache), "attention"),  # mask_padding=False reads padded rows
])
def test_the_sample_check_refuses_terms_that_read_teacher_padding(tmp_path, build, term):
    cache = TeacherCache(path=str(tmp_path), dtype="float32")
    method = build(cache)
    kind = "mlm" if method.task_head == "masked_lm" else "classification"
    batch = indexed_batches(kind, count=1)[0]
    cache.open(method, StubData([batch]))
    with pytest.raises(CacheMismatchError, match=f"term '{term}' reads the teacher's values at padded positions"):
        method.compute_losses(batch)


def test_a_request_the_cache_does_not_hold_is_refused(tmp_path):
    cache = TeacherCache(path=str(tmp_path))
    method = KD(**_pair(), teacher_cache=cache)
    batches = indexed_batches()
    cache.fill(method, StubData(batches))
    cache.open(method, StubData(batches))
    method.compute_losses(batches[0])
    method.teacher_request = lambda index: FeatureRequest(hidden_states=True)  # e.g. a stage that needs more
    with pytest.raises(ValueError, match="Teacher 0 is now asked for hidden states, which the cache"):
        method.compute_losses(batches[0])


def test_each_teacher_has_its_own_directory(tmp_path):
    teachers = [make_tiny_bert(seed=1), make_tiny_bert(seed=3)]
    cache = TeacherCache(path=str(tmp_path), verify_batches=0)
    method = KD(teachers=teachers, student=make_tiny_bert(seed=2, layers=2, hidden=16), teacher_cache=cache)
    batches = indexed_batches()
    cache.fill(method, StubData(batches))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teacher0", "teacher1"]
    cache.open(method, StubData(batches))
    with count_forwards(teachers[0]) as first, count_forwards(teachers[1]) as second:
        torch.manual_seed(0)
        cached = method.compute_losses(batches[1])
    assert first[0] == second[0] == 0
    method.teacher_cache = None
    torch.manual_seed(0)
    live = method.compute_losses(batches[1])
    for name, value in live.items():
        torch.testing.assert_close(cached[name], value, msg=name)


def test_the_sample_check_catches_corrupted_records(tmp_path):
    cache = TeacherCache(path=str(tmp_path), dtype="float32")
    method = KD(**_pair(), teacher_cache=cache)
    batches = indexed_batches()
    cache.fill(method, StubData(batches))
    records = next(tmp_path.glob("teacher0/rank0/*.examples.bin"))
    records.write_bytes(bytes(len(records.read_bytes())))  # every cached logit becomes 0
    cache.open(method, StubData(batches))
    with pytest.raises(CacheMismatchError, match="term 'soft' computed from the cached teacher outputs differs"):
        method.compute_losses(batches[0])

"""Stale caches are refused: each key component, and a row whose inputs changed under the same index."""

from __future__ import annotations

import json

import pytest
import torch

from lightning_kd.cache import StaleCacheError, TeacherCache
from lightning_kd.methods import KD, TinyBERT
from tests.cache import StubData, indexed_batches
from tests.conftest import make_tiny_bert


def _kd(cache, teacher_seed=1, **kwargs):
    return KD(teacher=make_tiny_bert(seed=teacher_seed), student=make_tiny_bert(seed=2, layers=2, hidden=16),
              teacher_cache=cache, **kwargs)


def _fill(tmp_path, method=None, data=None):
    cache = TeacherCache(path=str(tmp_path))
    method = method or _kd(cache)
    method.teacher_cache = cache
    cache.fill(method, data or StubData(indexed_batches()))
    return method


def _use(method, data, path):
    """Open a new cache on ``path`` for ``method`` and run one step."""
    cache = method.teacher_cache = TeacherCache(path=str(path))
    cache.open(method, data)
    return method.compute_losses(data.batches[0])


def test_the_same_key_reuses_the_cache(tmp_path):
    method = _fill(tmp_path)
    _use(method, StubData(indexed_batches()), tmp_path)


def test_other_teacher_weights_are_refused(tmp_path):
    _fill(tmp_path)
    with pytest.raises(StaleCacheError) as error:
        _use(_kd(None, teacher_seed=5), StubData(indexed_batches()), tmp_path)
    message = str(error.value)
    assert "teacher weights" in message and "teacher config" not in message
    assert f"Delete {tmp_path / 'teacher0'}" in message and "path" in message


def test_other_tokenizer_is_refused(tmp_path, tiny_tokenizer, tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    other = AutoTokenizer.from_pretrained(tiny_tokenizer_dir, do_lower_case=False)  # the cased variant
    batches = indexed_batches()
    _fill(tmp_path / "cache", data=StubData(batches, tokenizer=tiny_tokenizer))
    with pytest.raises(StaleCacheError, match="tokenizer"):
        _use(_kd(None), StubData(batches, tokenizer=other), tmp_path / "cache")


def test_other_dataset_is_refused_naming_the_setting(tmp_path):
    batches = indexed_batches()
    _fill(tmp_path, data=StubData(batches, fingerprint={"task": "sst2", "max_length": 128}))
    with pytest.raises(StaleCacheError, match=r"dataset: max_length: 128 → 64"):
        _use(_kd(None), StubData(batches, fingerprint={"task": "sst2", "max_length": 64}), tmp_path)


def test_other_masking_seed_is_refused(tmp_path):
    batches = indexed_batches("mlm")
    data = StubData(batches)
    data.masking_seed = 0
    mlm = {"teacher": make_tiny_bert("mlm", seed=1), "student": make_tiny_bert("mlm", seed=2, layers=2, hidden=16)}
    _fill(tmp_path, method=KD(**mlm), data=data)
    data.masking_seed = 1
    with pytest.raises(StaleCacheError, match=r"masking seed: 0 → 1"):
        _use(KD(**mlm), data, tmp_path)


def test_other_request_is_refused(tmp_path):
    _fill(tmp_path)  # KD stores logits only
    tinybert = TinyBERT(teacher=make_tiny_bert(seed=1), student=make_tiny_bert(seed=2, layers=2, hidden=16))
    with pytest.raises(StaleCacheError, match="stored feature request"):
        _use(tinybert, StubData(indexed_batches()), tmp_path)


def test_other_storage_settings_and_format_are_refused(tmp_path):
    method = _fill(tmp_path)
    manifest = tmp_path / "teacher0" / "manifest.json"
    document = json.loads(manifest.read_text())
    document["key"]["format_version"] = 1  # a cache filled before compact MLM logit rows (format 2)
    manifest.write_text(json.dumps(document))
    with pytest.raises(StaleCacheError, match="library cache format version: 1 → 2"):
        _use(method, StubData(indexed_batches()), tmp_path)


def test_a_changed_row_under_the_same_index_is_refused(tmp_path):
    batches = indexed_batches()
    method = _fill(tmp_path, data=StubData(batches))
    changed = [dict(b) for b in batches]
    changed[0]["input_ids"] = changed[0]["input_ids"].clone()
    changed[0]["input_ids"][1, 3] += 1
    cache = method.teacher_cache = TeacherCache(path=str(tmp_path))
    cache.open(method, StubData(batches))
    with pytest.raises(ValueError, match="cached inputs for example 1 differ from this batch: the data changed or masks are dynamic"):
        method.compute_losses(changed[0])


def test_a_changed_row_in_a_partly_cached_batch_is_refused(tmp_path):
    batches = indexed_batches(count=1)
    method = _fill(tmp_path, data=StubData(batches))
    mixed = dict(batches[0])
    mixed["example_index"] = torch.tensor([0, 1, 2, 99])  # 99 is new; rows 0-2 are cached
    mixed["input_ids"] = mixed["input_ids"].flip(0)  # cached examples now hold other tokens
    cache = method.teacher_cache = TeacherCache(path=str(tmp_path))
    cache.open(method, StubData(batches))
    with pytest.raises(ValueError, match="cached inputs for example 0 differ"):
        method.compute_losses(mixed)


def test_one_cache_object_reused_with_another_teacher_is_refused(tmp_path):
    cache = TeacherCache(path=str(tmp_path))
    data = StubData(indexed_batches())
    cache.fill(_kd(cache), data)
    other = _kd(cache, teacher_seed=5)  # same TeacherCache object, new teacher: fingerprinted afresh
    cache.open(other, data)
    with pytest.raises(StaleCacheError, match="teacher weights"):
        other.compute_losses(data.batches[0])

"""Compact MLM logits in the teacher cache: only the rows the method reads are stored (top-k per
labelled row for KD), a cached run gives the values of a live run with or without compact heads, and
rows that are not the batch's own are refused."""

from __future__ import annotations

import pytest
import torch

from lightning_kd.cache import TeacherCache
from lightning_kd.cache.layout import TOPK_FILL, RecordLayout
from lightning_kd.core.features import FeatureRequest, Features
from lightning_kd.core.logit_rows import row_mask
from lightning_kd.losses.prediction import PredictionLoss
from lightning_kd.methods import KD, DistilBERT, TinyBERT
from tests.cache import StubData, count_forwards, indexed_batches
from tests.conftest import make_tiny_bert


def _losses(method, batches):
    out = []
    for batch in batches:
        torch.manual_seed(0)
        out.append({name: value.detach() for name, value in method.compute_losses(batch).items()})
    return out


def _pair(hidden: int = 32):
    return {"teacher": make_tiny_bert("mlm", seed=1), "student": make_tiny_bert("mlm", seed=2, layers=2, hidden=hidden)}


def _compare(got, want, tolerance=(1e-5, 1e-6)):
    for a, b in zip(got, want):
        assert a.keys() == b.keys()
        for name in b:
            torch.testing.assert_close(a[name], b[name], rtol=tolerance[0], atol=tolerance[1], msg=name)


@pytest.mark.parametrize("build", [lambda **kw: KD(prediction=PredictionLoss(temperature=2.0), **kw), lambda **kw: DistilBERT(**kw), lambda **kw: TinyBERT(**kw)],
                         ids=["KD (labelled rows)", "DistilBERT (token rows)", "TinyBERT (no rows)"])
def test_a_cached_run_equals_a_live_run_with_and_without_compact_heads(build, tmp_path):
    cache = TeacherCache(path=str(tmp_path), top_k=None, dtype="float32", verify_batches=1)
    method = build(**_pair(), teacher_cache=cache).eval()
    batches = indexed_batches("mlm")
    data = StubData(batches)
    cache.fill(method, data)
    cache.open(method, data)
    with count_forwards(method.teachers[0]) as calls:
        cached = _losses(method, batches)
    assert calls[0] == 1, "only the sample check runs the teacher"
    method.teacher_cache = None
    _compare(cached, _losses(method, batches))
    method.compact_heads = False
    _compare(cached, _losses(method, batches))


def test_kd_stores_top_k_logits_of_the_labelled_rows_only(tmp_path):
    cache = TeacherCache(path=str(tmp_path), top_k=4, verify_batches=0)
    method = KD(**_pair(), prediction=PredictionLoss(temperature=2.0), teacher_cache=cache)
    batches = indexed_batches("mlm")
    cache.fill(method, StubData(batches))
    layout = RecordLayout.from_description(__import__("json").loads((tmp_path / "teacher0" / "manifest.json").read_text())["layout"])
    assert layout.compact and [f.name for f in layout.row_fields] == ["row_token", "topk_values", "topk_indices"]
    assert not any(f.name.startswith("topk") or f.name == "logits" for f in layout.token_fields), "no per-token logits"
    stored = sum(path.stat().st_size for path in (tmp_path / "teacher0").glob("rank0/*.rows.bin")) // layout.row_dtype.itemsize
    assert stored == sum(int(b["labels"].ne(-100).sum()) for b in batches)


def test_encoded_rows_come_back_at_the_batchs_positions():
    batch = indexed_batches("mlm")[0]
    rows = row_mask(batch, "labelled")
    logits = torch.randn(int(rows.sum()), 20)
    live = Features(logits=logits, logit_rows=rows, num_heads=4)
    request = FeatureRequest(logit_rows="labelled")
    layout = RecordLayout.from_features(live, request, top_k=3, dtype="float32")
    encoded = layout.encode(live, batch)
    assert encoded.row_counts.tolist() == rows.sum(dim=1).tolist()
    back = layout.decode(encoded.select([2, 0, 1, 3]).select([1, 2, 0, 3]), batch, request, torch.device("cpu"))
    assert torch.equal(back.logit_rows, rows)
    top = logits.topk(3, dim=-1)
    expected = torch.full_like(logits, TOPK_FILL).scatter_(-1, top.indices, top.values)
    torch.testing.assert_close(back.logits, expected)


def test_rows_that_are_not_the_batchs_labels_are_refused():
    batch = indexed_batches("mlm")[0]
    rows = row_mask(batch, "labelled")
    live = Features(logits=torch.randn(int(rows.sum()), 20), logit_rows=rows, num_heads=4)
    request = FeatureRequest(logit_rows="labelled")
    layout = RecordLayout.from_features(live, request, top_k=None, dtype="float32")
    encoded = layout.encode(live, batch)
    remasked = {**batch, "labels": batch["labels"].roll(1, dims=1)}
    with pytest.raises(ValueError, match="masking_seed"):
        layout.decode(encoded, remasked, request, torch.device("cpu"))


def test_no_rows_store_no_logits():
    batch = indexed_batches("mlm")[0]
    rows = row_mask(batch, "none")
    live = Features(logits=torch.zeros(0, 20), logit_rows=rows, hidden_states=(torch.randn(4, 12, 8),), num_heads=4)
    request = FeatureRequest(hidden_states=True, logit_rows="none")
    layout = RecordLayout.from_features(live, request, top_k=5, dtype="float32")
    assert layout.row_dtype is None and layout.top_k is None and not layout.vocabulary_logits
    back = layout.decode(layout.encode(live, batch), batch, request, torch.device("cpu"))
    assert back.logits.shape == (0, 20) and not back.logit_rows.any()
    assert RecordLayout.from_description(layout.describe()).describe() == layout.describe()

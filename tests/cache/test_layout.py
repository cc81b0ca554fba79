"""Records ↔ features: real tokens only, zeros at padding, the top-k reconstruction, storage dtypes."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_kd.cache.layout import TOPK_FILL, RecordLayout
from lightning_kd.core.features import FeatureRequest, Features
from lightning_kd.losses.logits import soft_kl

REQUEST = FeatureRequest(hidden_states=True, qkv_layers=frozenset({1}), score_layers=frozenset({0}))


def _batch():
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]])
    ids = torch.randint(5, 50, mask.shape) * mask
    return {"input_ids": ids, "attention_mask": mask}


def _features(vocabulary: int | None = None, scale: float = 1.0) -> Features:
    g = torch.Generator().manual_seed(0)
    size, length, width = 3, 4, 8
    logits = torch.randn(size, length, vocabulary, generator=g) if vocabulary else torch.randn(size, 2, generator=g)
    draw = lambda: scale * torch.randn(size, length, width, generator=g)
    return Features(logits=logits * 3, hidden_states=tuple(draw() for _ in range(3)), queries={0: draw(), 1: draw()},
                    keys={0: draw(), 1: draw()}, values={1: draw()}, num_heads=2)


def test_tokens_round_trip_with_zeros_at_padding():
    live, batch = _features(), _batch()
    layout = RecordLayout.from_features(live, REQUEST, top_k=None, dtype="float32")
    rows = layout.encode(live, batch)
    assert rows.counts.tolist() == [4, 2, 3] and len(rows.tokens) == 9, "only real tokens are stored"
    back = layout.decode(rows, batch, REQUEST, torch.device("cpu"))
    keep = batch["attention_mask"].bool()[..., None]
    for got, want in [*zip(back.hidden_states, live.hidden_states), (back.queries[0], live.queries[0]),
                      (back.keys[1], live.keys[1]), (back.values[1], live.values[1])]:
        torch.testing.assert_close(got, want * keep, rtol=0, atol=0)
    torch.testing.assert_close(back.logits, live.logits, rtol=0, atol=0)
    assert set(back.queries) == set(back.keys) == {0, 1} and set(back.values) == {1}
    assert all(h.is_contiguous() for h in back.hidden_states)
    assert back.num_heads == 2


def test_decoding_a_smaller_request_rebuilds_only_that():
    live, batch = _features(), _batch()
    layout = RecordLayout.from_features(live, REQUEST, top_k=None, dtype="float32")
    back = layout.decode(layout.encode(live, batch), batch, FeatureRequest(score_layers=frozenset({0})), torch.device("cpu"))
    assert back.hidden_states is None and set(back.queries) == {0} and not back.values


def test_top_k_reconstruction_is_the_renormalised_top_k_distribution():
    live, batch = _features(vocabulary=30), _batch()
    layout = RecordLayout.from_features(live, FeatureRequest(), top_k=5, dtype="float16")
    back = layout.decode(layout.encode(live, batch), batch, FeatureRequest(), torch.device("cpu"))
    assert back.logits.shape == (3, 4, 30)
    for row, position in [(0, 0), (1, 1), (2, 2)]:
        z = live.logits[row, position]
        top = z.topk(5)
        expected = torch.full((30,), TOPK_FILL)
        expected[top.indices] = top.values
        torch.testing.assert_close(back.logits[row, position], expected, rtol=0, atol=0)
        # softmax over the reconstruction = exp(z_i) / Σ_{j in top-k} exp(z_j) on the top-k, exactly 0 elsewhere
        for temperature in (1.0, 2.0, 20.0):
            p = (back.logits[row, position] / temperature).softmax(-1)
            denominator = sum(math.exp(v / temperature) for v in top.values.tolist())
            for i, v in zip(top.indices.tolist(), top.values.tolist()):
                assert p[i].item() == pytest.approx(math.exp(v / temperature) / denominator, rel=1e-5)
            assert p.sum().item() == pytest.approx(1.0) and (p[~torch.isin(torch.arange(30), top.indices)] == 0).all()
    assert (back.logits[1, 2:] == 0).all(), "padded positions hold zeros"
    # A KL against the reconstruction stays finite (no 0·log 0 NaN from -inf).
    assert torch.isfinite(soft_kl(torch.randn(3, 4, 30), back.logits, temperature=2.0))


@pytest.mark.parametrize("dtype, tolerance", [("float16", 1e-3), ("bfloat16", 8e-3)])
def test_half_precision_storage_keeps_about_three_or_two_digits(dtype, tolerance):
    live, batch = _features(), _batch()
    layout = RecordLayout.from_features(live, REQUEST, top_k=None, dtype=dtype)
    back = layout.decode(layout.encode(live, batch), batch, REQUEST, torch.device("cpu"))
    keep = batch["attention_mask"].bool()[..., None]
    assert back.hidden_states[1].dtype == torch.float32
    torch.testing.assert_close(back.hidden_states[1], live.hidden_states[1] * keep, rtol=tolerance, atol=tolerance)


def test_float16_overflow_names_the_fix():
    live, batch = _features(scale=1e5), _batch()
    layout = RecordLayout.from_features(live, REQUEST, top_k=None, dtype="float16")
    with pytest.raises(ValueError, match="does not fit the cache's storage dtype float16.*bfloat16 or float32"):
        layout.encode(live, batch)
    RecordLayout.from_features(live, REQUEST, top_k=None, dtype="bfloat16").encode(live, batch)


def test_layout_survives_its_manifest_description():
    layout = RecordLayout.from_features(_features(vocabulary=30), REQUEST, top_k=5, dtype="bfloat16")
    again = RecordLayout.from_description(layout.describe())
    assert again.token_dtype == layout.token_dtype and again.top_k == 5 and again.vocabulary_size == 30

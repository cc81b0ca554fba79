"""Captured Q/K/V, scores and probabilities agree with HF's eager attention."""

from __future__ import annotations

import pytest
import torch

from lightning_kd.core.attention_capture import attention_layout
from lightning_kd.core.features import FeatureRequest, capture
from tests.conftest import make_batch, make_tiny_bert


def test_rebuilt_attention_probs_match_eager_attentions():
    model = make_tiny_bert(seed=0).eval()
    batch = make_batch()
    request = FeatureRequest(hidden_states=True, prob_layers=frozenset({0, 3}))
    features = capture(model, batch, request)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        reference = model(**inputs, output_attentions=True)
    for layer in (0, 3):
        keep = batch["attention_mask"].bool()[:, None, :, None]  # compare real query rows
        got = features.attention_probs(layer).masked_fill(~keep, 0)
        want = reference.attentions[layer].masked_fill(~keep, 0)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    assert len(features.hidden_states) == 5
    assert set(features.queries) == {0, 3} and features.queries[0].shape == (4, 12, 32)


def test_only_requested_features_are_captured():
    model = make_tiny_bert(seed=0)
    features = capture(model, make_batch(), FeatureRequest())
    assert features.hidden_states is None and not features.queries and features.loss is None
    with_labels = capture(model, make_batch(), FeatureRequest(), with_labels=True)
    assert with_labels.loss is not None


def test_layer_out_of_range_is_a_clear_error():
    with pytest.raises(ValueError, match="has 4 layers"):
        capture(make_tiny_bert(), make_batch(), FeatureRequest(qkv_layers=frozenset({4})))


def test_projection_discovery_counts_layers():
    assert attention_layout(make_tiny_bert(layers=3)).calls == 3

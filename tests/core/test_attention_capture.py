"""Attention read from the attention interface equals what each model family really computes."""

from __future__ import annotations

import pytest
import torch

from lightning_kd.core.attention_capture import attention_layout, recording
from lightning_kd.core.features import FeatureRequest, capture
from lightning_kd.losses.attention import attention_kl, attention_score_mse
from lightning_kd.methods import MiniLM, TinyBERT
from tests.conftest import make_batch
from tests.families import FAMILIES, make_family_model

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
#: Families whose attention goes through transformers' attention interface.
READABLE = [f for f in FAMILIES if f not in ("deberta_v2", "mpnet")]
#: Weights that make Q and K large, so a missing mask, rotation or scale shows up in the probabilities.
_QK = ("query", "key", "q_proj", "k_proj", "q_lin", "k_lin", "Wqkv", "c_attn")


def _sharpened(family: str, attn: str = "eager", **overrides):
    model = make_family_model(family, attn=attn, **overrides).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() == 2 and any(part in name for part in _QK):
                parameter.mul_(4.0)
    return model


def _eager_attentions(model, batch):
    model.set_attn_implementation("eager")
    with torch.no_grad():
        return model(**{k: batch[k] for k in INPUTS}, output_attentions=True).attentions


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("family", READABLE)
def test_captured_probabilities_equal_the_models_own(family, attn):
    model = _sharpened(family, attn)
    batch = make_batch()
    features = capture(model, batch, FeatureRequest(prob_layers=frozenset(range(4))))
    reference = _eager_attentions(model, batch)
    assert len(reference) == 4 and attention_layout(model).calls == 4  # ALBERT: its shared layer, four times
    real_rows = batch["attention_mask"].bool()[:, None, :, None]
    for layer in range(4):
        got = features.attention_probs(layer).masked_fill(~real_rows, 0)
        want = reference[layer].masked_fill(~real_rows, 0)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_albert_calls_are_per_application_of_the_shared_layer():
    model = _sharpened("albert")
    features = capture(model, make_batch(), FeatureRequest(prob_layers=frozenset({0, 3})))
    # One module, two different inputs: layer 3's attention is not layer 0's.
    assert not torch.allclose(features.attention_probs(0), features.attention_probs(3))


def test_grouped_query_heads_are_repeated_as_the_model_does():
    model = _sharpened("qwen2")  # 4 query heads, 2 key/value heads
    features = capture(model, make_batch(), FeatureRequest(qkv_layers=frozenset({1})))
    assert features.num_heads == 4
    assert features.queries[1].shape == features.keys[1].shape == features.values[1].shape == (4, 12, 32)
    keys = features.split_heads(features.keys[1])
    torch.testing.assert_close(keys[:, 0], keys[:, 1])  # heads 0 and 1 share key/value head 0
    assert not torch.allclose(keys[:, 1], keys[:, 2])


def test_layer_scaled_gpt2_attention_is_read_with_its_scale():
    model = _sharpened("gpt2", scale_attn_by_inverse_layer_idx=True)
    batch = make_batch()
    features = capture(model, batch, FeatureRequest(prob_layers=frozenset({3})))
    assert features.scalings[3] == pytest.approx((32 // 4) ** -0.5 / 4)
    assert not attention_layout(model).plain(3)
    real_rows = batch["attention_mask"].bool()[:, None, :, None]
    want = _eager_attentions(model, batch)[3].masked_fill(~real_rows, 0)
    torch.testing.assert_close(features.attention_probs(3).masked_fill(~real_rows, 0), want, atol=1e-5, rtol=0)


def test_causal_and_windowed_masks_are_captured_padding_only_masks_are_not():
    batch = make_batch()
    causal = capture(make_family_model("llama"), batch, FeatureRequest(prob_layers=frozenset({0})))
    mask = causal.key_masks[0]
    assert mask.shape == (4, 1, 12, 12)
    assert not mask[0, 0, 0, 1] and mask[0, 0, 1, 0]  # no look-ahead
    assert not mask[1, 0, 11, 10]  # padded keys stay masked (row 1 has 3 padded tokens)
    windowed = capture(make_family_model("modernbert"), batch, FeatureRequest(prob_layers=frozenset({0, 1})))
    assert 0 not in windowed.key_masks  # a global layer: the padding mask says it all
    assert not windowed.key_masks[1][0, 0, 0, 11] and windowed.key_masks[1][0, 0, 0, 4]  # window of 8
    plain = capture(make_family_model("bert"), batch, FeatureRequest(prob_layers=frozenset({0})))
    assert not plain.key_masks


def test_capture_leaves_the_forward_unchanged():
    model = make_family_model("llama", attn="sdpa").eval()
    batch = make_batch()
    with torch.no_grad():
        plain = model(**{k: batch[k] for k in INPUTS}).logits
        captured = capture(model, batch, FeatureRequest(qkv_layers=frozenset({0, 2}))).logits
    torch.testing.assert_close(captured, plain, atol=0, rtol=0)


def test_recordings_do_not_nest():
    with recording(), pytest.raises(RuntimeError, match="already active"):
        with recording():
            pass


def test_key_mask_losses_match_a_written_out_causal_formula():
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 5, 5), torch.randn(2, 3, 5, 5)
    causal = torch.ones(5, 5, dtype=torch.bool).tril()[None, None].expand(2, 1, 5, 5)
    tokens = torch.ones(2, 5, dtype=torch.long)
    total = 0.0
    for b in range(2):
        for h in range(3):
            for i in range(5):
                ps = s[b, h, i, : i + 1].softmax(-1)
                pt = t[b, h, i, : i + 1].softmax(-1)
                total += (pt * (pt.log() - ps.log())).sum()
    torch.testing.assert_close(attention_kl(s, t, tokens, key_mask=causal), total / (2 * 3 * 5))
    squared = ((s - t) ** 2).masked_fill(~causal, 0).sum() / (causal.sum() * 3)
    torch.testing.assert_close(attention_score_mse(s, t, tokens, key_mask=causal), squared)


@pytest.mark.parametrize("family", ["deberta_v2", "mpnet"])
def test_families_with_their_own_attention_maths_are_refused_at_construction(family):
    teacher, student = make_family_model(family, seed=1), make_family_model(family, layers=2, seed=2)
    with pytest.raises(ValueError, match=rf"{family.replace('_', '-')}.*outside transformers' attention interface"):
        TinyBERT(teacher=teacher, student=student)
    with pytest.raises(ValueError, match="outside transformers' attention interface"):
        MiniLM(teacher=teacher, student=student)


def test_causal_teacher_and_bidirectional_student_are_refused_at_construction():
    teacher = make_family_model("llama", seed=1)
    student = make_family_model("bert", layers=2, seed=2)
    with pytest.raises(ValueError, match="attend differently"):
        MiniLM(teacher=teacher, student=student)


def test_modernbert_layers_of_different_window_types_are_refused_at_construction():
    teacher = make_family_model("modernbert", seed=1)  # layers 0, 2 global; 1, 3 sliding
    student = make_family_model("modernbert", layers=2, seed=2)  # layer 0 global, 1 sliding
    with pytest.raises(ValueError, match="attend differently"):
        TinyBERT(teacher=teacher, student=student, terms=["attention"])  # pairs (0, 1), (1, 3): all-sliding teacher

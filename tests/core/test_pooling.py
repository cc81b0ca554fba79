"""lightning_kd.core.pooling: the pooled vector against a written-out formula, and the per-model rule."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel

from lightning_kd.core.pooling import check_pooling, is_causal_lm, pool, real_token_index, resolve_pair, resolve_pooling
from tests.families import DECODERS, ENCODERS, FAMILIES, family_config, make_family_model

#: Three rows of length 6 with 6, 4 and 0 real tokens, padded on the right.
RIGHT = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0]])
#: The same rows padded on the left (as batched generation pads decoder inputs).
LEFT = RIGHT.flip(1)


def _expected(states: torch.Tensor, mask: torch.Tensor | None, mode: str) -> torch.Tensor:
    """Row by row with Python lists: no tensor indexing shared with the implementation."""
    rows = []
    for b in range(states.shape[0]):
        real = [n for n in range(states.shape[1]) if mask is None or mask[b, n]]
        if mode == "mean_with_padding":
            real = list(range(states.shape[1]))
        if mode == "first":
            picked = [real[0] if real else 0]
        elif mode == "last":
            picked = [real[-1] if real else 0]
        else:
            picked = real
        if not picked:  # a mean over no token is zero
            rows.append([0.0] * states.shape[2])
            continue
        vectors = [states[b, n].tolist() for n in picked]
        rows.append([sum(v[d] for v in vectors) / len(vectors) for d in range(states.shape[2])])
    return torch.tensor(rows)


@pytest.mark.parametrize("mode", ["first", "last", "mean", "mean_with_padding"])
@pytest.mark.parametrize("mask", [RIGHT, LEFT, None], ids=["right", "left", "none"])
def test_pool_matches_a_written_out_formula(mode, mask):
    states = torch.randn(3, 6, 5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(pool(states, mask, mode), _expected(states, mask, mode))


def test_first_and_last_follow_the_padding_side():
    assert real_token_index(RIGHT, 3, 6, "first", torch.device("cpu")).tolist() == [0, 0, 0]
    assert real_token_index(RIGHT, 3, 6, "last", torch.device("cpu")).tolist() == [5, 3, 0]
    assert real_token_index(LEFT, 3, 6, "first", torch.device("cpu")).tolist() == [0, 2, 0]
    assert real_token_index(LEFT, 3, 6, "last", torch.device("cpu")).tolist() == [5, 5, 0]
    assert real_token_index(None, 3, 6, "last", torch.device("cpu")).tolist() == [5, 5, 5]


def test_first_on_right_padding_is_exactly_position_zero_and_keeps_dtype_and_gradient():
    states = torch.randn(3, 6, 5, dtype=torch.float64, requires_grad=True)
    pooled = pool(states, RIGHT, "first")
    assert torch.equal(pooled, states[:, 0]) and pooled.dtype == torch.float64
    pooled.sum().backward()
    expected = torch.zeros_like(states)
    expected[:, 0] = 1.0
    assert torch.equal(states.grad, expected), "only the pooled token receives a gradient"
    assert pool(states.detach().bfloat16(), RIGHT, "mean").dtype == torch.bfloat16


def test_a_multiple_choice_mask_flattens_to_the_rows():
    states = torch.randn(6, 4, 3)
    mask = torch.tensor([[[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]] * 2)  # (B=2, K=3, N=4)
    torch.testing.assert_close(pool(states, mask, "last"), _expected(states, mask.reshape(6, 4), "last"))


def test_unresolved_or_unknown_modes_are_refused():
    with pytest.raises(ValueError, match="resolved mode"):
        pool(torch.zeros(1, 2, 3), None, "auto")
    with pytest.raises(ValueError, match="pooling must be 'auto' or one of"):
        resolve_pooling("cls_token", make_family_model("bert", layers=1))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_auto_is_last_for_decoders_and_first_for_encoders(family):
    head, base = make_family_model(family, layers=1), AutoModel.from_config(family_config(family, 1))
    causal = family in DECODERS
    assert is_causal_lm(head) is causal and is_causal_lm(base) is causal
    assert resolve_pooling("auto", head) == ("last" if causal else "first")
    for mode in ("last", "mean"):
        assert resolve_pooling(mode, head) == mode


def test_an_encoder_configured_as_a_decoder_is_causal():
    assert is_causal_lm(AutoModel.from_config(family_config("bert", 1, is_decoder=True)))


@pytest.mark.parametrize("family", sorted(DECODERS))
def test_first_is_refused_on_a_causal_lm(family):
    with pytest.raises(ValueError, match="attends only to itself"):
        resolve_pooling("first", make_family_model(family, layers=1), "teacher 0")


def test_each_model_is_pooled_by_its_own_rule():
    encoder, decoder = make_family_model("bert", layers=1), make_family_model("gpt2", layers=1)
    assert resolve_pair("auto", encoder, decoder, 0) == ("first", "last")
    assert resolve_pair("auto", decoder, encoder, 0) == ("last", "first")
    with pytest.raises(ValueError, match="teacher 1"):
        check_pooling("first", encoder, [encoder, decoder])


@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_pooled_vector_depends_on_the_last_real_token(family):
    """With ``auto``, every family's pooled last layer changes when a row's last real token changes;
    for decoders position 0 does not (the bug this module exists for)."""
    model = make_family_model(family, layers=2).eval()
    ids = torch.randint(5, 220, (2, 8), generator=torch.Generator().manual_seed(1))
    ids[:, 0] = 2
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    changed = ids.clone()
    changed[1, 5] = 5 + (int(ids[1, 5]) - 4) % 215  # row 1's last real token, another id
    mode = resolve_pooling("auto", model)
    with torch.no_grad():
        before, after = (model(input_ids=x, attention_mask=mask, output_hidden_states=True).hidden_states[-1] for x in (ids, changed))
    pooled_before, pooled_after = pool(before, mask, mode), pool(after, mask, mode)
    assert not torch.allclose(pooled_before[1], pooled_after[1]), "the pooled vector ignores the last token"
    torch.testing.assert_close(pooled_before[0], pooled_after[0])  # rows are independent
    if family in DECODERS:
        torch.testing.assert_close(before[1, 0], after[1, 0])  # position 0 is blind to the change


@pytest.mark.parametrize("family", ENCODERS)
def test_encoders_pool_exactly_the_first_position_as_before(family):
    """``auto`` on an encoder is ``states[:, 0]`` bit for bit on the collators' right-padded batches."""
    states, mask = torch.randn(3, 6, 4), torch.tensor([[1] * 6, [1, 1, 1, 1, 0, 0], [1, 0, 0, 0, 0, 0]])
    assert torch.equal(pool(states, mask, resolve_pooling("auto", make_family_model(family, layers=1))), states[:, 0])

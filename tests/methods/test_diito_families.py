"""DIITO's interchange intervention lands on the right layer application on every encoder family."""

from __future__ import annotations

import pytest
import torch

from lightning_kd.core.features import FeatureRequest, capture
from lightning_kd.losses.interchange import sample_interchange
from lightning_kd.methods import DIITO
from tests.conftest import make_batch
from tests.families import ENCODERS, make_family_model


@pytest.mark.parametrize("family", ENCODERS)
def test_intervened_hidden_state_is_replaced_at_its_layer_only(family):
    teacher = make_family_model(family, "mlm", layers=4, seed=1).eval()
    method = DIITO(teacher=teacher, student_init="teacher_uniform", student_layers=2)
    batch = make_batch("mlm")
    swap = sample_interchange(batch["attention_mask"], 0.5, generator=torch.Generator().manual_seed(0))
    request = FeatureRequest(hidden_states=True)
    with torch.no_grad():
        plain = capture(teacher, batch, request)
        values = {2: torch.randn(swap.rows.numel(), 32)}
        swapped = method.intervened(teacher, batch, [2], values, swap, request)
    # Hidden state 2 is layer application 1's output (on ALBERT the shared layer's second call). Most
    # families record hidden states before forward hooks run (state 2 unchanged), DeBERTa-v2 after
    # (state 2 carries the values); either way states 0–1 are untouched and state 3 changes. Had the
    # intervention hit application 0 (or ALBERT's first call), state 2 would differ elsewhere too;
    # had it hit application 2, state 3 would not change.
    for index in (0, 1):
        torch.testing.assert_close(swapped.hidden_states[index], plain.hidden_states[index])
    expected = plain.hidden_states[2].index_put((swap.rows, swap.columns), values[2])
    recorded = swapped.hidden_states[2]
    assert torch.allclose(recorded, plain.hidden_states[2]) or torch.allclose(recorded, expected, atol=1e-6)
    assert not torch.allclose(swapped.hidden_states[3], plain.hidden_states[3])
    with torch.no_grad():  # swapping in the values already there changes nothing
        same = method.intervened(teacher, batch, [2], {2: plain.hidden_states[2][swap.rows, swap.columns]}, swap, request)
    torch.testing.assert_close(same.logits, plain.logits)

"""Causal-LM metrics (perplexity, token accuracy) against a written-out cross-entropy."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.text import Perplexity
from torchmetrics.utilities.data import dim_zero_sum

from lightning_kd.metrics import build_lm_metrics

IGNORE = -100


def hand_perplexity(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """exp(mean over scored positions of -log softmax(logits)[label]), in Python floats."""
    rows = logits.reshape(-1, logits.shape[-1]).double().tolist()
    targets = labels.reshape(-1).tolist()
    nll = [math.log(sum(math.exp(v) for v in row)) - row[t] for row, t in zip(rows, targets) if t != IGNORE]
    return math.exp(sum(nll) / len(nll))


def hand_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    rows = logits.reshape(-1, logits.shape[-1]).tolist()
    targets = labels.reshape(-1).tolist()
    hits = [max(range(len(row)), key=row.__getitem__) == t for row, t in zip(rows, targets) if t != IGNORE]
    return sum(hits) / len(hits)


def batch(seed: int, b: int = 2, n: int = 5, v: int = 7, ignored: int = 3):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, n, v, generator=g) * 3
    labels = torch.randint(0, v, (b, n), generator=g)
    labels.view(-1)[torch.randperm(b * n, generator=g)[:ignored]] = IGNORE
    return logits, labels


def test_perplexity_and_accuracy_equal_the_hand_computation():
    logits, labels = batch(0)
    metrics = build_lm_metrics("val/")
    metrics.update(logits, labels)
    out = metrics.compute()
    assert set(out) == {"val/perplexity", "val/token_accuracy"}
    assert out["val/perplexity"].item() == pytest.approx(hand_perplexity(logits, labels), rel=1e-5)
    assert out["val/token_accuracy"].item() == pytest.approx(hand_accuracy(logits, labels))


def test_compact_rows_and_full_logits_agree():
    logits, labels = batch(1)
    keep = labels.ne(IGNORE)
    full, compact = build_lm_metrics(), build_lm_metrics()
    full.update(logits, labels)
    compact.update(logits[keep], labels[keep])  # (R, V) rows with (R,) labels, as compact heads give them
    a, b = full.compute(), compact.compute()
    assert a["perplexity"].item() == pytest.approx(b["perplexity"].item(), rel=1e-6)
    assert a["token_accuracy"].item() == b["token_accuracy"].item()
    compact_with_ignored = build_lm_metrics()
    compact_with_ignored.update(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
    assert compact_with_ignored.compute()["perplexity"].item() == pytest.approx(a["perplexity"].item(), rel=1e-6)


def test_ignored_positions_do_not_count_whatever_their_logits():
    logits, labels = batch(2)
    changed = logits.clone()
    changed[labels.eq(IGNORE)] = torch.randn_like(changed[labels.eq(IGNORE)]) * 50
    a, b = build_lm_metrics(), build_lm_metrics()
    a.update(logits, labels)
    b.update(changed, labels)
    assert a.compute()["perplexity"].item() == pytest.approx(b.compute()["perplexity"].item(), rel=1e-6)
    assert a["perplexity"].count.item() == labels.ne(IGNORE).sum().item()


def test_accumulation_is_token_weighted_not_a_mean_of_batches():
    first, second = batch(3, b=1, n=4, ignored=1), batch(4, b=3, n=6, ignored=2)  # 3 and 16 scored tokens
    metrics = build_lm_metrics()
    metrics.update(*first)
    metrics.update(*second)
    logits = torch.cat([first[0].reshape(-1, 7), second[0].reshape(-1, 7)])
    labels = torch.cat([first[1].reshape(-1), second[1].reshape(-1)])
    expected = hand_perplexity(logits, labels)
    mean_of_batches = (hand_perplexity(*first) + hand_perplexity(*second)) / 2
    assert metrics.compute()["perplexity"].item() == pytest.approx(expected, rel=1e-5)
    assert abs(expected - mean_of_batches) > 1e-3 * expected  # the two readings differ on this data
    assert metrics.compute()["token_accuracy"].item() == pytest.approx(hand_accuracy(logits, labels))


def test_states_are_summed_across_processes():
    first, second = batch(5), batch(6)
    rank0, rank1, single = build_lm_metrics(), build_lm_metrics(), build_lm_metrics()
    rank0.update(*first)
    rank1.update(*second)
    single.update(*first)
    single.update(*second)
    for name in ("perplexity", "token_accuracy"):
        metric = rank0[name]
        assert metric._reductions and all(fx is dim_zero_sum for fx in metric._reductions.values())
        metric.merge_state(rank1[name])  # what the DDP all-reduce does, in one process
        assert metric.compute().item() == pytest.approx(single[name].compute().item(), rel=1e-6)


def test_low_precision_logits_are_scored_in_float32():
    # A confident float16 LM: the target's probability (e^-20 ~ 2e-9) underflows in a float16 softmax.
    logits = torch.zeros(1, 3, 5, dtype=torch.float16)
    logits[..., 0] = 20.0
    labels = torch.tensor([[1, 0, IGNORE]])
    metrics = build_lm_metrics()
    metrics.update(logits, labels)
    expected = hand_perplexity(logits.float(), labels)
    assert metrics.compute()["perplexity"].item() == pytest.approx(expected, rel=1e-5)
    assert math.isfinite(expected)
    naive = Perplexity(ignore_index=IGNORE)
    naive.update(logits, labels)
    assert not math.isfinite(naive.compute().item())  # why update is not torchmetrics' own


def test_mismatched_shapes_are_refused():
    logits, labels = batch(7)
    with pytest.raises(ValueError, match="compact rows"):
        build_lm_metrics().update(logits, labels[:, :-1])

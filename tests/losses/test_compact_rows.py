"""Logit losses on compact rows equal the masked computation on whole logits (values and gradients),
for both reductions and per example; rows off the mask never matter."""

from __future__ import annotations

import pytest
import torch

from lightning_kd.core.features import Features
from lightning_kd.losses.logits import logits_mse, soft_cross_entropy, soft_kl
from lightning_kd.losses.masking import reduce_masked, reduce_masked_per_sample
from lightning_kd.losses.prediction import PredictionLoss
from lightning_kd.losses.rows import reduce_rows
from lightning_kd.losses.vocabulary import word_prediction_loss
from tests.conftest import make_batch

B, N, V = 4, 12, 50


def _logits(seed: int) -> torch.Tensor:
    return torch.randn(B, N, V, generator=torch.Generator().manual_seed(seed)) * 3


@pytest.mark.parametrize("reduction", ["masked_mean", "gkd"])
@pytest.mark.parametrize("per_sample", [False, True])
def test_reduce_rows_is_reduce_masked(reduction, per_sample):
    values = torch.rand(B, N)
    mask = make_batch("mlm")["labels"].ne(-100)
    mask[3] = False  # an example without any row
    whole = (reduce_masked_per_sample if per_sample else reduce_masked)(values, mask, reduction)
    torch.testing.assert_close(reduce_rows(values[mask], mask, reduction, per_sample), whole)


@pytest.mark.parametrize("loss", ["kl", "ce", "mse"])
@pytest.mark.parametrize("reduction", ["masked_mean", "gkd"])
@pytest.mark.parametrize("per_sample", [False, True])
def test_losses_on_compact_rows_equal_masked_whole_logits(loss, reduction, per_sample):
    mask = make_batch("mlm")["labels"].ne(-100)
    teacher = _logits(1)
    student_whole = _logits(2).requires_grad_(True)
    student_rows = student_whole.detach()[mask].clone().requires_grad_(True)
    if loss == "mse":
        whole = logits_mse(student_whole, teacher, mask, reduction, 0.5, per_sample)
        rows = logits_mse(student_rows, teacher[mask], None, reduction, 0.5, per_sample, positions=mask)
    else:
        fn = soft_kl if loss == "kl" else soft_cross_entropy
        whole = fn(student_whole, teacher, 2.0, mask, reduction, True, per_sample)
        rows = fn(student_rows, teacher[mask], 2.0, None, reduction, True, per_sample, positions=mask)
    torch.testing.assert_close(rows, whole, rtol=1e-5, atol=1e-6)
    weights = torch.arange(1.0, B + 1) if per_sample else torch.tensor(1.0)
    (whole * weights).sum().backward()
    (rows * weights).sum().backward()
    torch.testing.assert_close(student_rows.grad, student_whole.grad[mask], rtol=1e-5, atol=1e-7)
    assert not student_whole.grad[~mask].any(), "rows off the mask get no gradient"


@pytest.mark.parametrize("positions", ["masked_tokens", "all_tokens", "all_positions"])
@pytest.mark.parametrize("reduction", ["masked_mean", "gkd"])
def test_prediction_loss_reads_compact_features_as_whole_ones(positions, reduction):
    batch = make_batch("mlm")
    loss = PredictionLoss(temperature=2.0, soft_positions=positions, reduction=reduction)
    student, teacher = _logits(3), _logits(4)
    whole = loss.soft_features(Features(logits=student), Features(logits=teacher), batch, per_sample=True)
    rows = loss.token_mask(batch)
    rows = torch.ones(B, N, dtype=torch.bool) if rows is None else rows
    compact = loss.soft_features(Features(logits=student[rows], logit_rows=rows), Features(logits=teacher[rows], logit_rows=rows),
                                 batch, per_sample=True)
    torch.testing.assert_close(compact, whole, rtol=1e-5, atol=1e-6)
    # One model compact, the other whole (e.g. compact heads off for one side): the same value.
    mixed = loss.soft_features(Features(logits=student[rows], logit_rows=rows), Features(logits=teacher), batch)
    torch.testing.assert_close(mixed, loss.soft_features(Features(logits=student), Features(logits=teacher), batch))


def test_masked_tokens_loss_is_blind_to_unlabelled_positions():
    """Masking invariance: logits at unlabelled positions (even NaN) change nothing, whole or compact."""
    batch = make_batch("mlm")
    labelled = batch["labels"].ne(-100)
    loss = PredictionLoss(temperature=2.0, soft_positions="masked_tokens")
    student, teacher = _logits(5), _logits(6)
    reference = loss.soft_features(Features(logits=student), Features(logits=teacher), batch)
    garbage_s, garbage_t = student.clone(), teacher.clone()
    garbage_s[~labelled], garbage_t[~labelled] = float("nan"), 1e4
    assert torch.equal(loss.soft_features(Features(logits=garbage_s), Features(logits=garbage_t), batch), reference)
    compact = loss.soft_features(Features(logits=student[labelled], logit_rows=labelled),
                                 Features(logits=teacher[labelled], logit_rows=labelled), batch)
    torch.testing.assert_close(compact, reference, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("mode", [None, "restrict", "teacher_min"])
@pytest.mark.parametrize("reduction", ["masked_mean", "gkd"])
def test_word_prediction_loss_on_compact_rows(mode, reduction):
    mask = make_batch("mlm")["attention_mask"].bool()
    student, teacher = _logits(7), _logits(8)
    options = {"top_n": 5, "top_n_mode": mode} if mode else {}
    whole = word_prediction_loss(student, teacher, 2.0, mask=mask, reduction=reduction, **options)
    rows = word_prediction_loss(student[mask], teacher[mask], 2.0, reduction=reduction, positions=mask, **options)
    assert whole.keys() == rows.keys()
    for name in whole:
        torch.testing.assert_close(rows[name], whole[name], rtol=1e-5, atol=1e-6)


def test_rows_and_a_mask_together_are_refused():
    mask = torch.ones(B, N, dtype=torch.bool)
    with pytest.raises(ValueError, match="not both"):
        soft_kl(torch.zeros(B * N, V), torch.zeros(B * N, V), mask=mask, positions=mask)

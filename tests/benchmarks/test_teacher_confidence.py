"""The soft-target summary: uniform logits say nothing, a peaked teacher's targets are one-hot."""

from __future__ import annotations

import torch

from benchmarks.teacher_confidence import soft_target_summary


def test_uniform_logits_give_the_uniform_summary_at_any_temperature():
    for temperature in (0.5, 2.0):
        summary = soft_target_summary(torch.zeros(3, 4), torch.tensor([0, 1, 2]), temperature)
        assert abs(summary["top"] - 0.25) < 1e-9 and abs(summary["true"] - 0.25) < 1e-9 and abs(summary["entropy"] - 1) < 1e-9


def test_a_lower_temperature_sharpens_and_a_peaked_teacher_is_nearly_one_hot():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    labels = torch.tensor([0, 0])
    sharp, soft = soft_target_summary(logits, labels, 0.5), soft_target_summary(logits, labels, 2.0)
    assert sharp["top"] > soft["top"] and sharp["entropy"] < soft["entropy"]
    assert abs(sharp["true"] - (sharp["top"] + (1 - sharp["top"]) / 2) / 2) < 1e-9  # right on one row, wrong on the other
    peaked = soft_target_summary(torch.tensor([[50.0, 0.0, 0.0]]), torch.tensor([0]), 1.0)
    assert peaked["top"] > 1 - 1e-9 and peaked["entropy"] < 1e-9

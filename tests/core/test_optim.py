"""The optimizer's decay groups match Hugging Face's Trainer on every family, and the schedule's two
deliberate differences from ``transformers.get_scheduler`` (the reasons written in core/optim.py)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification, Trainer, get_scheduler

from lightning_kd.core.optim import build_optimizer, lr_lambda, parameter_groups
from tests.families import FAMILIES, family_config


@pytest.mark.parametrize("family", list(FAMILIES))
def test_decay_groups_are_the_trainers(family):
    model = AutoModelForSequenceClassification.from_config(family_config(family, num_labels=2))
    decay, no_decay = parameter_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in decay["params"]} == set(Trainer.get_decay_parameter_names(None, model))
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.01, 0.0)
    layer_norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm) and m.weight is not None]
    assert all(any(m.weight is p for p in no_decay["params"]) for m in layer_norms)  # GPT-2's ln_1 too


def test_frozen_parameters_are_left_out():
    model = AutoModelForSequenceClassification.from_config(family_config("bert", num_labels=2))
    for p in model.classifier.parameters():
        p.requires_grad_(False)
    optimizer = build_optimizer(model, learning_rate=1e-3, weight_decay=0.0, adam_epsilon=1e-8, schedule="linear",
                                warmup_ratio=0.0, final_lr_ratio=0.0, total_steps=10)["optimizer"]
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert held == {id(p) for p in model.parameters() if p.requires_grad}


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_schedule_differs_from_get_scheduler_only_in_warm_up(schedule):
    warmup, total = 7, 125
    ours = lr_lambda(schedule, warmup, total)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    theirs = get_scheduler(schedule, optimizer, num_warmup_steps=warmup, num_training_steps=total).lr_lambdas[0]
    assert theirs(0) == 0.0 and ours(0) == pytest.approx(1 / warmup)  # their first step does not learn
    assert [ours(s) for s in range(warmup)] == pytest.approx([theirs(s + 1) for s in range(warmup)])
    assert [ours(s) for s in range(warmup, total + 1)] == pytest.approx([theirs(s) for s in range(warmup, total + 1)], abs=1e-12)


def test_linear_decay_to_a_floor():
    factor = lr_lambda("linear", 0, 100, final_ratio=0.1)
    assert factor(0) == 1.0 and factor(50) == pytest.approx(0.55) and factor(100) == pytest.approx(0.1)

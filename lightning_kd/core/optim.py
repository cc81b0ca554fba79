"""AdamW with weight-decay groups and a warm-up + decay learning-rate schedule."""

from __future__ import annotations

import math
from typing import Iterable, Literal

import torch
from torch import nn

Schedule = Literal["linear", "cosine", "constant"]
_NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")


def parameter_groups(named_parameters: Iterable[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """Two AdamW groups: weights with decay, biases and normalisation weights without."""
    decay, no_decay = [], []
    for name, parameter in named_parameters:
        if parameter.requires_grad:
            (no_decay if name.endswith(_NO_DECAY) else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_lambda(schedule: Schedule, warmup_steps: int, total_steps: int, final_ratio: float = 0.0):
    """Multiplier of the peak learning rate at a given optimizer step.

    Linear warm-up over ``warmup_steps``, then ``linear``/``cosine`` decay to ``final_ratio`` at
    ``total_steps`` or a ``constant`` rate.
    """
    if schedule not in ("linear", "cosine", "constant"):
        raise ValueError(f"Unknown lr_schedule {schedule!r}; use 'linear', 'cosine' or 'constant'.")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        shape = 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
        return final_ratio + (1.0 - final_ratio) * shape

    return factor


def build_optimizer(
    named_parameters: Iterable[tuple[str, nn.Parameter]],
    *,
    learning_rate: float,
    weight_decay: float,
    adam_epsilon: float,
    schedule: Schedule,
    warmup_ratio: float,
    final_lr_ratio: float,
    total_steps: int,
) -> dict:
    """The ``configure_optimizers`` return value (optimizer + per-step scheduler)."""
    optimizer = torch.optim.AdamW(parameter_groups(named_parameters, weight_decay), lr=learning_rate, eps=adam_epsilon)
    warmup = int(warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(schedule, warmup, total_steps, final_lr_ratio))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

"""Checks and helpers shared by the schedule callbacks: the strategy they run under, the training
length their schedule is a fraction of, and rank-consistent random draws. (What they need from the
module they drive is in :mod:`lightning_kd.callbacks.protocols`.)

Every check fails before the first step with a message that names the fix.
"""

from __future__ import annotations

import math
import os
import zlib

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import DDPStrategy, DeepSpeedStrategy, FSDPStrategy
from pytorch_lightning.utilities.exceptions import MisconfigurationException

UNUSED_PARAMETERS_FLAG = "--trainer.strategy=ddp_find_unused_parameters_true"


def require_unused_parameter_support(callback: pl.Callback, trainer: pl.Trainer, why: str) -> None:
    """The method leaves some parameters without a gradient in some steps (``why`` says which):
    DDP must look for unused parameters, DeepSpeed must ignore them (ZeRO stages 1–2), FSDP is refused.
    """
    strategy = trainer.strategy
    name = type(callback).__name__
    if isinstance(strategy, DeepSpeedStrategy):  # a DDPStrategy subclass: checked first
        zero = (strategy.config or {}).get("zero_optimization") or {}
        if zero.get("stage") == 3:
            raise MisconfigurationException(
                f"{name}: {why}. DeepSpeed is supported with ZeRO stages 1 and 2 only (they ignore unused "
                "parameters); ZeRO-3 prefetches parameters along a recorded module order, which this method "
                "changes from step to step, and is not supported. Use strategy: deepspeed_stage_2, or DDP."
            )
        if zero.get("ignore_unused_parameters") is False:
            raise MisconfigurationException(
                f"{name}: {why}, but the DeepSpeed config sets zero_optimization.ignore_unused_parameters=false. "
                "Remove that key (DeepSpeed's default is true)."
            )
        return
    if isinstance(strategy, DDPStrategy) and not getattr(strategy, "_ddp_kwargs", {}).get("find_unused_parameters", False):
        raise MisconfigurationException(
            f"{name}: {why}, so DDP must be told to look for unused parameters. Run with "
            f"{UNUSED_PARAMETERS_FLAG} (or strategy: ddp_find_unused_parameters_true in the trainer config, "
            "or DDPStrategy(find_unused_parameters=True) from Python)."
        )
    if isinstance(strategy, FSDPStrategy):
        raise MisconfigurationException(
            f"{name}: {why}; FSDP is not supported for this method. Use DDP with "
            f"{UNUSED_PARAMETERS_FLAG} or DeepSpeed ZeRO stage 1 or 2."
        )


def planned_steps(trainer: pl.Trainer, callback: pl.Callback) -> int:
    """``trainer.estimated_stepping_batches`` as an int (the total ``I`` a schedule is a fraction of)."""
    total = trainer.estimated_stepping_batches
    if not math.isfinite(total) or total < 1:
        raise MisconfigurationException(
            f"{type(callback).__name__} schedules over the planned number of optimizer steps, but this run has "
            f"none ({total}); set trainer.max_steps or trainer.max_epochs."
        )
    return int(total)


def run_seed() -> int:
    """The run's seed (``seed_everything`` sets it on every rank), 0 when none was set."""
    return int(os.environ.get("PL_GLOBAL_SEED", "0"))


def keyed_generator(*key: object) -> torch.Generator:
    """A CPU generator seeded from ``key`` only, so every rank (and a resumed run) draws the same numbers."""
    return torch.Generator().manual_seed(zlib.crc32(":".join(map(str, key)).encode()))

"""What a checkpoint records of a method's constructor arguments, and loading it back safely.

Lightning stores a module's hyper-parameters in every checkpoint and the CLI's ``config.yaml``.
Models given as objects (a student, a teacher, a method's head source) must never be among them —
a checkpoint would pickle whole models — so they are left out here and the teachers' sources are
recorded separately (``DistillationModule.on_save_checkpoint``). The knob dataclasses that are kept
(e.g. :class:`~lightning_kd.losses.prediction.PredictionLoss`) are registered as safe globals, so
Lightning's ``weights_only`` loading reads the checkpoints back.
"""

from __future__ import annotations

import dataclasses
from types import FrameType
from typing import Any

import torch
from pytorch_lightning.core.mixins import HyperparametersMixin
from pytorch_lightning.utilities.parsing import collect_init_args
from torch import nn


def save_constructor_arguments(module: HyperparametersMixin, frame: FrameType | None, ignore: list[str]) -> None:
    """``module.save_hyperparameters`` for the constructor running in ``frame``, without models.

    Args:
        module: the method being constructed.
        frame: the frame of its (base) constructor; Lightning walks the subclass frames from there.
        ignore: arguments never saved (models, strategies, caches), on top of any argument holding a module.
    """
    objects = [name for name, value in _constructor_arguments(frame).items() if _holds_module(value)]
    module.save_hyperparameters(ignore=[*ignore, *objects], frame=frame)
    allow_in_checkpoints(dict(module.hparams))


def allow_in_checkpoints(value: Any) -> None:
    """Let ``torch.load(weights_only=True)`` (Lightning's resume default) read the knob dataclasses
    found in ``value`` (a hyper-parameter dict, list or dataclass, searched recursively).

    Called again when a module is unpickled in another process (``ddp_spawn`` workers), where the
    registration of the constructing process does not exist.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        torch.serialization.add_safe_globals([type(value)])
        value = vars(value)
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        for item in value:
            allow_in_checkpoints(item)


def _constructor_arguments(frame: FrameType | None) -> dict:
    """The constructor arguments Lightning's ``save_hyperparameters`` would collect from ``frame``."""
    found: dict = {}
    for local in collect_init_args(frame, [], classes=(HyperparametersMixin,)):
        found.update(local)
    return found


def _holds_module(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return any(_holds_module(item) for item in value)
    return isinstance(value, nn.Module)

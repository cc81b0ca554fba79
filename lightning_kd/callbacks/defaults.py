"""A method's default schedule callbacks, attached unless the user configured their own."""

from __future__ import annotations

from collections.abc import Sequence

import pytorch_lightning as pl
from pytorch_lightning.trainer.states import TrainerFn


def unless_configured(module: pl.LightningModule, defaults: Sequence[pl.Callback]) -> list[pl.Callback]:
    """The callbacks of ``defaults`` whose type the module's trainer does not hold yet.

    For a method's ``configure_callbacks``. Lightning *replaces* every trainer callback of a type that
    ``configure_callbacks`` returns, so returning a default unconditionally would throw away the
    user's own instance (and its settings). A trainer callback of the default's type, or of a subclass
    of it, counts as configured; the default is then left out and the user's instance drives the run.

    Schedules act in training steps only, so nothing is returned outside ``fit`` (validate, test and
    predict run the plain student). Without a trainer (a direct call) every default is returned.
    """
    trainer = module._trainer
    if trainer is None:
        return list(defaults)
    if trainer.state.fn != TrainerFn.FITTING:
        return []
    return [default for default in defaults if not any(isinstance(c, type(default)) for c in trainer.callbacks)]

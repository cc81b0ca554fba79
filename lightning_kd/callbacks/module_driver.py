"""ModuleDriver: the base of callbacks that set something on the module they drive, checked at setup."""

from __future__ import annotations

from typing import ClassVar

import pytorch_lightning as pl
from typing_extensions import override

from lightning_kd.callbacks.protocols import refuse_rivals, require_protocol


class ModuleDriver(pl.Callback):
    """Checks, at ``setup``, that the module has what this callback uses (:attr:`protocol`) and, when
    fitting starts, that no other callback in the trainer sets the same attributes (:attr:`sets`).

    A method that needs the callback attaches a default instance from its ``configure_callbacks``;
    an instance of the same type (or a subclass) in the trainer's callbacks replaces that default.

    Attributes:
        protocol: the :mod:`~lightning_kd.callbacks.protocols` class the module must satisfy; ``None``
            (a user's own subclass that names none) checks nothing.
        methods: the library methods that satisfy it (named in error messages only, never imported).
        sets: the module attributes this callback writes; two callbacks writing one of them are refused.
    """

    protocol: ClassVar[type | None] = None
    methods: ClassVar[tuple[str, ...]] = ()
    sets: ClassVar[tuple[str, ...]] = ()

    def required_protocol(self) -> type | None:
        """What the module must have for this instance's settings (default: :attr:`protocol`)."""
        return self.protocol

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        protocol = self.required_protocol()
        if protocol is not None:
            require_protocol(self, pl_module, protocol, self.methods)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Rivals only overwrite each other in training steps; by now the method's defaults are attached too.
        refuse_rivals(self, trainer)

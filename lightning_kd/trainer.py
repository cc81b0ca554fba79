"""The ``lightning-kd`` trainer: Lightning's ``Trainer`` whose ``precision`` also takes ``"auto"``."""

from __future__ import annotations

from typing import Any, Literal

import pytorch_lightning as pl
from lightning_fabric.connector import _PRECISION_INPUT
from pytorch_lightning.utilities import rank_zero_info

from lightning_kd import precision as precision_choice


class AutoPrecisionTrainer(pl.Trainer):
    """``pytorch_lightning.Trainer`` with ``precision="auto"``: the precision the hardware runs natively.

    ``"auto"`` resolves the accelerator first, then picks (see :mod:`lightning_kd.precision`):
    on CPU ``bf16-mixed`` with native bf16 instructions, else ``32-true``; on a CUDA GPU
    ``bf16-mixed`` where supported, else ``16-mixed``. The choice and its reason are logged when
    the trainer is built, e.g. ``precision: auto -> 32-true (this CPU has no native bf16: …)``.
    Any other value (and the default, ``None`` = ``32-true``) is passed to Lightning unchanged.

    Args:
        precision: ``"auto"``, or any precision Lightning accepts (``32-true``, ``bf16-mixed``, ``16-mixed``, …).
        **kwargs: the other ``Trainer`` arguments.
    """

    def __init__(self, *, precision: _PRECISION_INPUT | Literal["auto"] | None = None, **kwargs: Any) -> None:
        if precision == "auto":
            accelerator = precision_choice.resolve_accelerator(kwargs.get("accelerator", "auto"))
            precision, reason = precision_choice.choose_precision(accelerator)
            rank_zero_info(f"precision: auto -> {precision} ({reason})")
        super().__init__(precision=precision, **kwargs)

"""What each schedule callback needs from the module it drives, as small protocols.

A callback never imports a method class: it names the attributes it sets and the methods it calls
(the :class:`~typing.Protocol` classes below), and :func:`require_protocol` checks the module against
them at ``setup``. Any ``LightningModule`` with those members can be driven; the library's methods are
named in the error messages only, as the usual fix.
"""

from __future__ import annotations

import inspect
from typing import Protocol

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from torch import Tensor


class HasReplacingRate(Protocol):
    """Module replacing (Theseus): the probability that a position runs its student layer."""

    replacing_rate: float | None


class HasTeacherScale(Protocol):
    """An annealed factor ``φ`` on the teacher's logits (Annealing-KD, Continuation-KD)."""

    teacher_scale: float | None


class HasHardMix(Protocol):
    """The share ``ψ`` of the hard loss in a hard/soft mix (Continuation-KD)."""

    hard_mix: float | None


class Staged(Protocol):
    """Training in stages ``1 … num_stages``; the callback sets :attr:`stage` before every batch (SID, MobileBERT)."""

    stage: int | None

    @property
    def num_stages(self) -> int:
        """The number of stages (the last one runs to the end of training)."""
        ...


class StagedByDistance(Staged, Protocol):
    """A :class:`Staged` module that also reports the latest step's distance to its teacher (SID's
    summed [CLS] cosine distance), so a threshold can advance the stage early."""

    last_cls_distance: Tensor | None


class ResamplesTeacherLayers(Protocol):
    """Randomly drawn teacher layers (RAIL-KD): drawn from a given generator, or restored from a checkpoint."""

    #: ``"random"`` when the layers are drawn (any other value: fixed layers, nothing to re-draw).
    layer_selection: str

    def resample_teacher_layers(self, generator: torch.Generator | None = None) -> list[list[int]]:
        """Draw and use new teacher layers (one sorted list per teacher); returns them."""
        ...

    def set_teacher_layers(self, layers: list[list[int]]) -> None:
        """Use ``layers`` (one sorted list per teacher), e.g. those saved in a checkpoint."""
        ...


def protocol_members(protocol: type) -> list[str]:
    """The attribute and method names ``protocol`` declares, its protocol bases' included, in order."""
    names: list[str] = []
    for cls in reversed(protocol.__mro__):
        if cls is object or cls is Protocol or not getattr(cls, "_is_protocol", False):
            continue
        declared = [*inspect.get_annotations(cls), *(n for n in vars(cls) if not n.startswith("_"))]
        names += [n for n in declared if n not in names]
    return names


def require_protocol(callback: pl.Callback, module: pl.LightningModule, protocol: type, methods: tuple[str, ...]) -> None:
    """Refuse to drive a module that lacks a member of ``protocol``.

    Args:
        callback: the callback doing the check (named in the message).
        module: the module it would drive.
        protocol: what the callback needs (see the classes above).
        methods: names of the library methods that implement ``protocol``, for the message only (may be empty).

    Raises:
        MisconfigurationException: naming the callback, the members it needs and the ones missing.
    """
    members = protocol_members(protocol)
    missing = [name for name in members if not hasattr(module, name)]
    if not missing:
        return
    wanted = ", ".join(f"`{name}`" for name in members)
    drives = f" drives {' or '.join(methods)}:" if methods else ""
    instead = f", or train with lightning_kd.methods.{methods[0]} (which attaches this schedule itself)" if methods else ""
    raise MisconfigurationException(
        f"{type(callback).__name__}{drives} it needs a module with {wanted} ({protocol.__name__}), but the module "
        f"is a {type(module).__name__} without {', '.join(f'`{name}`' for name in missing)}. Remove it from "
        f"trainer.callbacks{instead}."
    )


def refuse_rivals(callback: pl.Callback, trainer: pl.Trainer) -> None:
    """Refuse a second callback that sets one of the module attributes ``callback`` sets (``sets``):
    each would overwrite the other's value before every batch, and only the last would count."""
    ours = set(getattr(callback, "sets", ()))
    for other in trainer.callbacks:
        shared = ours & set(getattr(other, "sets", ())) if other is not callback else set()
        if shared:
            raise MisconfigurationException(
                f"{type(callback).__name__} and {type(other).__name__} both set the module's "
                f"{', '.join(f'`{name}`' for name in sorted(shared))}; they would overwrite each other's schedule. "
                "Keep one in trainer.callbacks."
            )

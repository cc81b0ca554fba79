"""The ``lightning-kd`` command: LightningCLI with ``fit``/``validate``/``test``/``predict``.

Example::

    lightning-kd fit --config configs/quickstart/2_distil_student.yaml

This module is the light entry point: :func:`main` first checks the command line without loading
torch or Lightning (:mod:`lightning_kd.startup`: ``--help``, unknown keys and methods, YAML errors,
a missing checkpoint answer in well under a second), then builds and runs
:class:`lightning_kd.distillation_cli.DistillationCLI`. ``DistillationCLI`` and :func:`run_cli` are
importable from here as before; they load Lightning when first used.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING

from lightning_kd.errors import user_errors
from lightning_kd.startup.preflight import preflight
from lightning_kd.startup.signals import startup_signals

if TYPE_CHECKING:
    from lightning_kd.distillation_cli import DistillationCLI

_LAZY = {"DistillationCLI": "lightning_kd.distillation_cli"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lightning_kd.cli' has no attribute {name!r}")


def run_cli(args: list[str] | None = None, run: bool = True) -> DistillationCLI:
    """Parse ``args`` (default: the command line), build the objects and run the subcommand.

    Returns the CLI object (``.model``, ``.datamodule``, ``.trainer``) for use from Python and tests.
    See :func:`lightning_kd.distillation_cli.run_cli`.
    """
    from lightning_kd.distillation_cli import run_cli as run_distillation_cli

    return run_distillation_cli(args, run)


def main() -> None:
    """Entry point of ``lightning-kd`` and ``python -m lightning_kd``.

    Exit status 0 on success; 2 for a command refused before any work (one sentence; ``--debug``
    shows the traceback); 3 for a run that stopped itself and says where to resume (a non-finite
    loss, a checkpoint or export that could not be written); 143 (SIGTERM) or 130 (Ctrl-C) for an
    interrupted run, after saying which checkpoint to resume from (Lightning itself would exit 0
    after SIGTERM: see lightning_kd.fault.interrupted); 1 for a bug (a traceback).
    """
    with startup_signals(), user_errors():  # user_errors takes --debug out of sys.argv
        words = preflight(sys.argv[1:])
        from lightning_kd.fault.interrupted import exit_if_interrupted

        sys.argv[1:] = words  # short names expanded; LightningCLI reads sys.argv itself
        with exit_if_interrupted():
            run_cli()

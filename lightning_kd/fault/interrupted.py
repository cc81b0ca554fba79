"""An interrupted fit ends with a non-zero exit status and says which checkpoint to resume from.

Lightning 2.6 ends a fit that receives SIGTERM (cluster pre-emption, ``kill``) by raising
``SIGTERMException`` at the next batch boundary. That exception is a ``SystemExit`` without a code,
so the process would exit 0 and ``fit && next-stage`` would carry on without the student, which is
never exported. Ctrl-C (SIGINT) becomes ``sys.exit(1)``. The shell convention is 128 + the signal
number, so here a fit stopped by SIGTERM exits 143 and one stopped by Ctrl-C exits 130.

* :func:`report_interruption` (called by the ``ExportStudent`` callback every ``lightning-kd`` run has)
  prints, on rank zero, that the run is incomplete and the newest checkpoint to resume from.
* :func:`exit_if_interrupted` wraps ``lightning-kd``'s ``main`` and turns Lightning's exits into those statuses.
* :func:`interruption_signal` tells the pipeline runner which signal stopped a stage.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytorch_lightning as pl
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities.exceptions import SIGTERMException

from lightning_kd.fault.checkpoint_files import newest_checkpoint
from lightning_kd.fault.periodic_checkpoint import PeriodicCheckpoint


def interruption_signal(error: BaseException) -> signal.Signals | None:
    """SIGTERM or SIGINT when ``error`` is how Lightning ends an interrupted run, else ``None``."""
    if isinstance(error, SIGTERMException):
        return signal.SIGTERM
    if isinstance(error, KeyboardInterrupt):
        return signal.SIGINT
    # After Ctrl-C, Lightning shuts down and calls sys.exit(1) inside its `except KeyboardInterrupt`.
    if isinstance(error, SystemExit) and isinstance(error.__context__, KeyboardInterrupt):
        return signal.SIGINT
    return None


def exit_status(received: signal.Signals) -> int:
    """The shell's status for a process stopped by ``received``: 128 + the signal number (SIGTERM 143, SIGINT 130)."""
    return 128 + int(received)


@contextmanager
def exit_if_interrupted() -> Iterator[None]:
    """Turn Lightning's exit after SIGTERM (status 0) or Ctrl-C (status 1) into ``SystemExit(143)`` or ``SystemExit(130)``."""
    try:
        yield
    except SystemExit as error:
        received = interruption_signal(error)
        if received is None:
            raise
        raise SystemExit(exit_status(received)) from error


def incomplete_run_message(trainer: pl.Trainer, received: signal.Signals) -> str:
    """What was interrupted, and the newest checkpoint to resume from (or how to get checkpoints next time)."""
    fitting = trainer.state.fn == TrainerFn.FITTING
    what = f"The run was interrupted by {received.name} at step {trainer.global_step}"
    if not fitting:
        return f"{what} and its {trainer.state.fn} results are incomplete (exit status {exit_status(received)})."
    checkpoint = newest_checkpoint(trainer)
    if checkpoint is not None:
        hint = f"to resume, rerun the same command with --ckpt_path {checkpoint}"
    elif any(isinstance(c, PeriodicCheckpoint) for c in trainer.checkpoint_callbacks):
        hint = "no checkpoint was written yet, so a rerun starts from the beginning"
    else:
        hint = "no checkpoint was written; add --config configs/trainer/checkpointing.yaml to be able to resume"
    # No full stop after the hint: it may end with a path to copy.
    return f"{what} and is incomplete: no student was exported (exit status {exit_status(received)}); {hint}"


def report_interruption(trainer: pl.Trainer, exception: BaseException) -> None:
    """From a callback's ``on_exception``: on SIGTERM or Ctrl-C, print (rank zero, stderr) that the run is
    incomplete and which checkpoint to resume from; other exceptions speak for themselves."""
    received = interruption_signal(exception)
    if received is not None and trainer.is_global_zero:
        print(f"lightning_kd: {incomplete_run_message(trainer, received)}", file=sys.stderr, flush=True)

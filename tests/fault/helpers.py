"""Crash and poison injectors for the fault-tolerance tests; CLI runs load them by class path.

A subprocess imports this module as ``tests.fault.helpers`` (its PYTHONPATH holds the repo root).
"""

from __future__ import annotations

import errno
import io
import os
import signal
import sys
import time

import pytorch_lightning as pl
import torch

from lightning_kd.fault import AtomicCheckpointIO, atomic_write


def die() -> None:
    """End this process the way an OOM killer or a preempted node does: SIGKILL, no clean-up, no hooks."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class KillAfterStep(pl.Callback):
    """SIGKILL the run right after optimizer step ``step``, before that step's checkpoint (if any) is written.

    Args:
        step: the ``trainer.global_step`` after which to die.
    """

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args) -> None:
        # Checkpoint callbacks run after every other callback, so this fires before this step's save.
        if trainer.global_step == self.step:
            die()


class DieDuringWrite(AtomicCheckpointIO):
    """Atomic checkpoint IO that is SIGKILLed halfway through its ``write``-th write of a file named ``name``.

    Args:
        write: which write of ``name`` to die in (1 = the first).
        name: the file name whose writes are counted.
    """

    def __init__(self, write: int, name: str = "last.ckpt") -> None:
        super().__init__()
        self.write, self.name, self._count = write, name, 0

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        if os.path.basename(path) == self.name:
            self._count += 1
            if self._count == self.write:
                buffer = io.BytesIO()
                torch.save(checkpoint, buffer)
                data = buffer.getvalue()

                def write_half_then_die(handle) -> None:
                    handle.write(data[: len(data) // 2])
                    handle.flush()
                    die()

                atomic_write(path, write_half_then_die)
        super().save_checkpoint(checkpoint, path, storage_options)


class PoisonLossAt(pl.Callback):
    """From optimizer step ``step`` on, make the student's embeddings NaN in the first forward pass of each training
    batch, so the loss is NaN while the weights stay finite and good.

    This is a transient fault (what an fp16 overflow or a flaky device looks like): any further pass of the same
    batch, such as the check of the checkpoints after the NaN, is finite, so the newest checkpoint recovers.

    Args:
        step: the ``trainer.global_step`` at whose next batch the loss turns NaN.
    """

    def __init__(self, step: int) -> None:
        self.step = step
        self._hook = None
        self._armed = False

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_step >= self.step:
            self._armed = True
            if self._hook is None:
                self._hook = pl_module.student.get_input_embeddings().register_forward_hook(self._poison)

    def _poison(self, module, inputs, output):
        if self._armed:
            self._armed = False
            return output * float("nan")
        return output


class FullDiskAfter(AtomicCheckpointIO):
    """Atomic checkpoint IO on a disk that fills up: from the ``write``-th checkpoint file on, ``write()`` raises
    ``OSError(ENOSPC)`` once ``keep`` bytes of that file are written (as a full filesystem does).

    Args:
        write: the first checkpoint write that fails (1 = the first file).
        keep: bytes that still fit before the error.
    """

    def __init__(self, write: int, keep: int = 4096) -> None:
        super().__init__()
        self.write, self.keep, self._count = write, keep, 0

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        self._count += 1
        self.opener = (lambda descriptor: _FullDiskFile(os.fdopen(descriptor, "wb"), self.keep)) if self._count >= self.write else None
        super().save_checkpoint(checkpoint, path, storage_options)


class _FullDiskFile:
    """A binary file whose writes fail with ENOSPC past ``room`` bytes."""

    def __init__(self, handle, room: int) -> None:
        self._handle, self._room = handle, room

    def write(self, data) -> int:
        size = len(memoryview(data).cast("B"))
        if size > self._room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= size
        return self._handle.write(data)

    def __getattr__(self, name: str):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self._handle.close()


class PauseAfterStep(pl.Callback):
    """After optimizer step ``step``, write ``marker`` and wait (up to ``timeout`` s) for a signal from outside.

    Lightning's SIGTERM handler only sets a flag, so the wait ends when it is set; SIGINT raises
    KeyboardInterrupt inside the wait. Either way the signal arrives mid-training, at a known step.

    Args:
        step: the ``trainer.global_step`` after which to pause.
        marker: a file created when the pause starts (the test sends its signal then).
        timeout: seconds to wait before carrying on unsignalled.
    """

    def __init__(self, step: int, marker: str, timeout: float = 60.0) -> None:
        self.step, self.marker, self.timeout = step, marker, timeout

    def on_train_batch_end(self, trainer: pl.Trainer, *args) -> None:
        if trainer.global_step != self.step:
            return
        with open(self.marker, "w") as handle:
            handle.write(str(os.getpid()))
        deadline = time.monotonic() + self.timeout
        while not trainer.received_sigterm and time.monotonic() < deadline:
            time.sleep(0.05)


class SignalAfterStep(pl.Callback):
    """Send this process SIGTERM after optimizer step ``step``, as a cluster pre-empting the job would.

    Args:
        step: the ``trainer.global_step`` after which the signal is sent.
    """

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args) -> None:
        if trainer.global_step == self.step:
            # Lightning installs its SIGTERM handler during fit; without it the default action would end the test run.
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN, None)
            os.kill(os.getpid(), signal.SIGTERM)


class RecordTraining(pl.Callback):
    """Record, for the tests, the optimizer as the first training batch of a fit sees it, and every step's loss."""

    def __init__(self) -> None:
        self.first: dict | None = None
        self.losses: list[float] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        if self.first is None:
            optimizer = trainer.optimizers[0]
            self.first = {
                "global_step": trainer.global_step,
                "batch_idx": batch_idx,
                "lr": [group["lr"] for group in optimizer.param_groups],
                "initial_lr": [group["initial_lr"] for group in optimizer.param_groups],
                "adam_steps": sorted({float(state["step"]) for state in optimizer.state.values()}),
                "weights": {k: v.detach().clone() for k, v in pl_module.state_dict().items()},
            }

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        self.losses.append(float(outputs["loss"]))


class WaitForFile(pl.Callback):
    """After optimizer step ``step``, write ``marker`` and wait (up to ``timeout`` s) until ``release`` exists:
    a run held mid-training while a test starts another one beside it.

    Args:
        step: the ``trainer.global_step`` after which to wait.
        marker: a file created when the wait starts.
        release: the file whose appearance ends the wait.
        timeout: seconds to wait at most.
    """

    def __init__(self, step: int, marker: str, release: str, timeout: float = 120.0) -> None:
        self.step, self.marker, self.release, self.timeout = step, marker, release, timeout

    def on_train_batch_end(self, trainer: pl.Trainer, *args) -> None:
        if trainer.global_step != self.step:
            return
        with open(self.marker, "w") as handle:
            handle.write(str(os.getpid()))
        deadline = time.monotonic() + self.timeout
        while not os.path.exists(self.release) and time.monotonic() < deadline:
            time.sleep(0.05)

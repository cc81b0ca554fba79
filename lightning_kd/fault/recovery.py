"""After a non-finite loss: which checkpoint really recovers, and the loss spikes that came before.

A run stopped by a NaN loss used to name its newest checkpoint as "the last good state". That is
right when the loss broke on its own (an fp16 overflow, one bad batch), but not when the weights
diverged first: with far too high a learning rate the weights grow for some steps (finite, ever
larger losses) before a forward pass overflows, and every checkpoint written meanwhile holds
weights that give the same NaN again, at any learning rate.

:class:`NonFiniteRecovery` (every ``lightning-kd`` run has one) keeps the batch of the running
step and the losses of the steps before. When :func:`lightning_kd.fault.nonfinite.check_finite_loss`
stops the run, :meth:`NonFiniteRecovery.check_checkpoints` loads the run's checkpoints, newest
first, into the module and computes the loss of the failed batch with each one's weights. The
*last good checkpoint* is the newest one whose weights give a finite loss on that batch and that was
written before the first loss spike of this launch (a step whose loss exceeded ``spike_factor`` times
the median of the steps before it). The module's own weights are put back afterwards.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import DDPStrategy, DeepSpeedStrategy, SingleDeviceStrategy

from lightning_kd.fault.checkpoint_files import intact_checkpoints, readable_archive

#: Files beside the checkpoints that hold weights only (a failed export's rescue): not resumable.
_WEIGHTS_ONLY_PREFIX = "student-weights-"


@dataclass(frozen=True)
class Spike:
    """A training step whose loss jumped: ``loss`` against the ``median`` of the steps before it."""

    step: int
    loss: float
    median: float


@dataclass(frozen=True)
class CheckedCheckpoint:
    """One checkpoint tried on the failed batch.

    Attributes:
        path: the file.
        step: its ``global_step`` (``None`` when it could not be read).
        loss: the loss its weights give on the failed batch (``None`` when it could not be tried).
        finite: whether that loss is finite (on every rank, under DDP).
        problem: why it could not be tried, if so.
        weight_rms: root mean square of its trainable weight matrices (what a learning rate is compared with).
        largest_weight: the largest absolute value among them.
    """

    path: Path
    step: int | None
    loss: float | None = None
    finite: bool = False
    problem: str | None = None
    weight_rms: float | None = None
    largest_weight: float | None = None


@dataclass
class RecoveryReport:
    """What :meth:`NonFiniteRecovery.check_checkpoints` found.

    Attributes:
        checked: the checkpoints tried, newest first.
        good: the last good checkpoint (see the module docstring), or ``None``.
        spikes: the loss spikes of this launch before the non-finite loss.
        skipped: checkpoints not tried because ``max_checked`` was reached.
        start_weight_rms: the trainable weights' RMS when this launch started training.
    """

    checked: list[CheckedCheckpoint] = field(default_factory=list)
    good: CheckedCheckpoint | None = None
    spikes: list[Spike] = field(default_factory=list)
    skipped: int = 0
    start_weight_rms: float | None = None

    @property
    def first_spike(self) -> int | None:
        return self.spikes[0].step if self.spikes else None


class NonFiniteRecovery(pl.Callback):
    """Find, when a training loss turns NaN/inf, the newest checkpoint whose weights really recover.

    It holds a reference to the running step's batch (no copy) and a float per step, so it costs
    nothing measurable; the checking happens only after a non-finite loss, before the run stops.
    :class:`~lightning_kd.fault.NonFiniteLossError`'s message then reports the spikes and the checked
    checkpoints, and its resume command uses the last good one. Python users add it to
    ``Trainer(callbacks=[...])``; without it the message names the newest checkpoint unchecked.

    Args:
        max_checked: try at most this many checkpoint files (newest first; each costs a load and a forward pass).
        spike_factor: a step's loss is a spike when it exceeds this multiple of the median of the steps before it.
        spike_window: how many earlier steps that median is taken over.
    """

    def __init__(self, max_checked: int = 20, spike_factor: float = 10.0, spike_window: int = 20) -> None:
        if max_checked < 1 or spike_factor <= 1 or spike_window < 1:
            raise ValueError(
                f"NonFiniteRecovery needs max_checked >= 1, spike_factor > 1 and spike_window >= 1; got {max_checked}, "
                f"{spike_factor} and {spike_window}."
            )
        self.max_checked, self.spike_factor, self.spike_window = max_checked, spike_factor, spike_window
        self.batch: Any = None
        self._recent: deque[float] = deque(maxlen=spike_window)
        self._spikes: list[Spike] = []
        self._start_rms: float | None = None

    # ------------------------------------------------------------------ recording
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._recent.clear()
        self._spikes = []
        self._start_rms = weight_rms(_trainable_matrices(pl_module, dict(pl_module.named_parameters())))[0]

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self.batch = batch

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.batch = None

    def record(self, step: int, loss: float) -> None:
        """Note a finite training loss (called by ``check_finite_loss``, which has it on the host already)."""
        if self._recent and loss > self.spike_factor * (median := statistics.median(self._recent)) and loss > median:
            self._spikes.append(Spike(step, loss, median))
        self._recent.append(loss)

    @property
    def spikes(self) -> list[Spike]:
        """The loss spikes recorded in this launch, oldest first."""
        return list(self._spikes)

    # ------------------------------------------------------------------ checking
    def check_checkpoints(self, trainer: pl.Trainer, module: pl.LightningModule) -> RecoveryReport | None:
        """Try the run's checkpoints on the failed batch, newest first; ``None`` when that cannot be done here
        (no batch recorded, or a strategy that shards the weights: DeepSpeed, FSDP)."""
        strategy = trainer.strategy
        if self.batch is None or not isinstance(strategy, (SingleDeviceStrategy, DDPStrategy)) or isinstance(strategy, DeepSpeedStrategy):
            return None
        report = RecoveryReport(spikes=self.spikes, start_weight_rms=self._start_rms)
        candidates = trainer.strategy.broadcast([str(p) for p in candidate_checkpoints(trainer)])
        seen_steps: set[int] = set()
        saved = {key: value.detach().to("cpu", copy=True) for key, value in module.state_dict().items()}
        try:
            for index, path in enumerate(candidates):
                if len(report.checked) >= self.max_checked:
                    report.skipped = len(candidates) - index
                    break
                checked = self._try(trainer, module, Path(path), seen_steps)
                if checked is None:
                    continue
                report.checked.append(checked)
                spike = report.first_spike
                if checked.finite and (spike is None or (checked.step is not None and checked.step < spike)):
                    report.good = checked
                    break
        finally:
            module.load_state_dict(saved)
        return report

    def _try(self, trainer: pl.Trainer, module: pl.LightningModule, path: Path, seen_steps: set[int]) -> CheckedCheckpoint | None:
        """The loss of the failed batch with ``path``'s weights (``None``: the same step as one already tried).

        Every rank takes part in the decision (one collective per checkpoint), whatever happened here."""
        step = loss = problem = rms = largest = None
        try:
            checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
            state, step = checkpoint["state_dict"], int(checkpoint.get("global_step", -1))
        except Exception as error:  # an unreadable candidate is reported, not fatal
            problem = f"unreadable ({type(error).__name__})"
        else:
            if step in seen_steps:
                return None
            seen_steps.add(step)
            rms, largest = weight_rms(_trainable_matrices(module, state))
            try:
                module.load_state_dict(state, strict=True)
                loss = batch_loss(module, self.batch)
            except Exception as error:  # e.g. a checkpoint of another model shape
                problem = f"could not be tried ({type(error).__name__}: {str(error)[:120]})"
        finite = bool(trainer.strategy.reduce_boolean_decision(loss is not None and math.isfinite(loss), all=True))
        return CheckedCheckpoint(path, step, loss, finite, problem, rms, largest)


def batch_loss(module: pl.LightningModule, batch: Any) -> float:
    """The training loss of ``batch`` with the module's current weights, without gradients, in training mode.

    Dropout is drawn from a fixed seed, so every checkpoint tried sees the same masks.
    """
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.no_grad(), torch.random.fork_rng(devices=devices):
        torch.manual_seed(0)
        return float(module.compute_losses(batch)["loss"].detach().float())


def candidate_checkpoints(trainer: pl.Trainer) -> list[Path]:
    """The run's resumable checkpoint files, newest first: every intact ``*.ckpt`` in its checkpoint callbacks'
    directories, their last/best files, and the checkpoint this launch resumed from."""
    found: set[Path] = set()
    for callback in getattr(trainer, "checkpoint_callbacks", None) or []:
        for path in (getattr(callback, "last_model_path", ""), getattr(callback, "best_model_path", "")):
            if path and "://" not in str(path):
                found.add(Path(path))
        directory = getattr(callback, "dirpath", None)
        if directory and "://" not in str(directory):
            found |= set(intact_checkpoints(directory))
    resumed = getattr(trainer, "ckpt_path", None)
    if resumed and "://" not in str(resumed):
        found.add(Path(resumed))
    usable = [p for p in found if not p.name.startswith(_WEIGHTS_ONLY_PREFIX) and p.is_file() and readable_archive(p)]
    # last.ckpt is written right after the periodic file of the same step: try it first when times tie.
    return sorted(usable, key=lambda p: (p.stat().st_mtime_ns, p.name.startswith("last")), reverse=True)


def _trainable_matrices(module: pl.LightningModule, tensors: dict[str, torch.Tensor]) -> Iterable[torch.Tensor]:
    """The entries of ``tensors`` that are trainable weight matrices of ``module`` (what AdamW moves)."""
    for name, parameter in module.named_parameters():
        value = tensors.get(name)
        if parameter.requires_grad and value is not None and value.dim() >= 2 and value.is_floating_point():
            yield value


def weight_rms(tensors: Iterable[torch.Tensor]) -> tuple[float | None, float | None]:
    """Root mean square and largest absolute value over ``tensors`` (``None``, ``None`` when there are none)."""
    total, count, largest = 0.0, 0, 0.0
    for tensor in tensors:
        values = tensor.detach().float()
        total += float(values.square().sum())
        count += values.numel()
        largest = max(largest, float(values.abs().max())) if values.numel() else largest
    return (math.sqrt(total / count), largest) if count else (None, None)

"""Progress as plain lines for logs: step/total, loss, throughput and ETA every N optimizer steps.

Lightning's progress bar redraws one terminal line; when stdout goes to a file (nohup, SLURM, CI)
it shows nothing useful, and a 30-minute run logs no progress at all. This callback prints lines
such as::

    [progress] step 150/636 (23.6%) epoch 0 | loss 0.4123 | 41.2 examples/s, 1650 tokens/s | elapsed 3m38s, ETA 11m46s

A method that generates training batches (on-policy, sequence-level KD) also gets its share of the
time spent generating since the previous line: ``| generating 31%``.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping
from typing import Any, Literal

import pytorch_lightning as pl
import torch

When = Literal["not_tty", "always", "never"]


class ProgressLog(pl.Callback):
    """Print a progress line every ``every_n_steps`` optimizer steps (and after the first and last).

    The loss is the mean over the batches since the previous line; examples and tokens per second
    count every process (tokens: the attention mask's ones, i.e. padding excluded; the data's batches,
    not generated ones) and leave out time spent validating; the ETA assumes the remaining steps take as
    long as the ones so far in this run. A module with a ``generation_seconds`` total (seconds spent
    generating training batches) gets that time's share of the window, on rank 0.

    Args:
        every_n_steps: print after every this many optimizer steps.
        when: ``"not_tty"`` (default) prints only when stdout is not a terminal, where the progress
            bar shows nothing; ``"always"`` prints in a terminal too; ``"never"`` turns it off.
    """

    def __init__(self, every_n_steps: int = 50, when: When = "not_tty") -> None:
        if every_n_steps < 1:
            raise ValueError(f"progress.every_n_steps must be >= 1, got {every_n_steps}")
        if when not in ("not_tty", "always", "never"):
            raise ValueError(f"progress.when must be 'not_tty', 'always' or 'never', got {when!r}")
        self.every_n_steps, self.when = every_n_steps, when
        self.active = False
        self._reset_window()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        interactive = sys.stdout.isatty()
        self.active = trainer.is_global_zero and (self.when == "always" or (self.when == "not_tty" and not interactive))
        self._start_time, self._start_step = time.monotonic(), trainer.global_step
        self._printed_step = trainer.global_step
        self._reset_window(getattr(pl_module, "generation_seconds", None))

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self.active:
            return
        self._count(outputs, batch)
        self._generation_now = getattr(pl_module, "generation_seconds", None)
        step, total = trainer.global_step, trainer.estimated_stepping_batches
        if step == self._printed_step:  # still accumulating gradients: no optimizer step since the last line
            return
        if step - self._start_step == 1 or step % self.every_n_steps == 0 or step >= total:
            print(self._line(trainer, step, total), flush=True)
            self._printed_step = step
            self._reset_window(self._generation_now)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._validation_start = time.monotonic()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Validation inside an epoch is not training throughput (the ETA still includes it).
        if self._validation_start is not None:
            self._paused += time.monotonic() - self._validation_start
            self._validation_start = None

    # ------------------------------------------------------------------ helpers
    def _reset_window(self, generated: float | None = None) -> None:
        self._loss_sum, self._batches = 0.0, 0
        self._examples, self._tokens = 0, torch.zeros((), dtype=torch.long)
        self._window_start, self._paused, self._validation_start = time.monotonic(), 0.0, None
        # Seconds spent generating training batches, as the module counted them at the window's start and now.
        self._generation_start = self._generation_now = generated

    def _count(self, outputs: Any, batch: Any) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, torch.Tensor):
            self._loss_sum += float(loss.detach())
            self._batches += 1
        if isinstance(batch, Mapping) and isinstance(batch.get("input_ids"), torch.Tensor):
            self._examples += batch["input_ids"].shape[0]
            mask = batch.get("attention_mask")
            # Summed on the batch's device; read once per line, so no extra synchronisation per step.
            counted = mask.sum() if isinstance(mask, torch.Tensor) else torch.tensor(batch["input_ids"].numel())
            self._tokens = self._tokens.to(counted.device) + counted

    def _line(self, trainer: pl.Trainer, step: int, total: float) -> str:
        now = time.monotonic()
        elapsed, window = now - self._start_time, max(now - self._window_start - self._paused, 1e-9)
        of_total = f"/{int(total)} ({100 * step / total:.1f}%)" if math.isfinite(total) and total > 0 else ""
        parts = [f"[progress] step {step}{of_total} epoch {trainer.current_epoch}"]
        if self._batches:
            parts.append(f"loss {self._loss_sum / self._batches:.4f}")
        if self._examples:
            world = trainer.world_size
            parts.append(f"{world * self._examples / window:.1f} examples/s, {world * int(self._tokens) / window:.0f} tokens/s")
        if self._generation_now is not None and self._generation_start is not None:
            parts.append(f"generating {100 * min(1.0, (self._generation_now - self._generation_start) / window):.0f}%")
        timing = f"elapsed {_duration(elapsed)}"
        done = step - self._start_step
        if math.isfinite(total) and 0 < done and step < total:
            timing += f", ETA {_duration(elapsed / done * (total - step))}"
        parts.append(timing)
        return " | ".join(parts)


def _duration(seconds: float) -> str:
    """``3h02m``, ``4m05s`` or ``12s``."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"

"""Stop a run at the first NaN/inf loss, before the optimizer step, with a message that says what to do.

Raising from ``training_step`` means backward, the optimizer step and every later hook of the step
are skipped: the weights stay those of the last completed step, and ``ModelCheckpoint`` writes
nothing more (it does not save on an exception unless ``save_on_exception=True``, which would then
save these still-finite weights). The check reads the loss on the host, one sync per step; the
progress bar already reads it every step, and on a GPU the sync waits only for the forward pass
the backward pass needs anyway (see ``docs/fault_tolerance.md`` for the measurement).

Finite weights are not necessarily good ones: when the weights diverged before the loss did, the
newest checkpoints give the same NaN again. With a :class:`~lightning_kd.fault.recovery.NonFiniteRecovery`
callback (every ``lightning-kd`` run has one) the message reports the loss spikes before the NaN and
names the newest checkpoint whose weights give a finite loss on the batch that failed, and the
resume command it prints uses that one.

Only the loss is checked. Under fp16 mixed precision, steps whose *gradients* overflow are skipped by
the loss scaler (Lightning's or DeepSpeed's), which is normal and not an error.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import Tensor

from lightning_kd.errors import RunFailure
from lightning_kd.fault.periodic_checkpoint import PeriodicCheckpoint
from lightning_kd.fault.recovery import CheckedCheckpoint, NonFiniteRecovery, RecoveryReport

#: The suggested rate is at most this fraction of the weights' RMS: one AdamW step moves each weight by
#: up to about the learning rate, so a larger rate changes a typical weight by more than this fraction per step.
WEIGHT_STEP_FRACTION = 0.1
_SHOWN_CHECKED = 6


class NonFiniteLossError(FloatingPointError, RunFailure):
    """A training step's loss is NaN or infinite; the run stopped before its optimizer step.

    ``lightning-kd`` prints the message (where, each loss term, the spikes before it, the last good
    checkpoint and the command to resume) and exits with status 3.
    """


def check_finite_loss(module: pl.LightningModule, terms: dict[str, Tensor], batch_idx: int) -> None:
    """Raise :class:`NonFiniteLossError` when ``terms["loss"]`` is NaN/inf on any rank.

    A finite loss is handed to the trainer's :class:`NonFiniteRecovery` (if any), which watches for spikes.

    Args:
        module: the module being trained (its trainer, if any, supplies step, precision and checkpoints).
        terms: the step's named loss terms from ``compute_losses``, including ``"loss"``.
        batch_idx: index of the batch in the epoch, for the message.
    """
    loss = terms["loss"].detach()
    value = loss.float().item() if loss.numel() == 1 else None  # the one host sync of the check
    bad_here = not math.isfinite(value) if value is not None else not bool(torch.isfinite(loss).all())
    trainer = module._trainer
    # Under DDP every rank must stop together: a rank that stopped alone would leave the others
    # waiting forever in the gradient all-reduce.
    bad = trainer.strategy.reduce_boolean_decision(bad_here, all=False) if trainer is not None else bad_here
    recovery = _recovery(trainer)
    if not bad:
        if recovery is not None and value is not None:
            recovery.record(trainer.global_step, value)
        return
    report = recovery.check_checkpoints(trainer, module) if recovery is not None else None
    raise NonFiniteLossError(describe_nonfinite_loss(trainer, terms, batch_idx, bad_here, report))


def describe_nonfinite_loss(
    trainer: pl.Trainer | None,
    terms: dict[str, Tensor],
    batch_idx: int,
    bad_here: bool = True,
    report: RecoveryReport | None = None,
) -> str:
    """The error message: where it happened, each term's value, the loss spikes before it, likely fixes,
    the last good checkpoint (checked on this batch when ``report`` says how each checkpoint did) and the
    arguments to resume from it."""
    step = trainer.global_step if trainer is not None else 0
    epoch = trainer.current_epoch if trainer is not None else 0
    values = ", ".join(f"{name}={_format(value)}" for name, value in terms.items())
    culprits = [name for name, value in terms.items() if name != "loss" and not bool(torch.isfinite(value.detach()).all())]
    lines = [
        (
            f"Non-finite training loss at global step {step} (epoch {epoch}, batch {batch_idx}); the run stopped before "
            f"this step's optimizer update, so the weights are those after step {step}."
        ),
    ]
    if bad_here:
        lines.append(f"Loss terms of this step: {values}." + (f" Non-finite: {', '.join(culprits)}." if culprits else ""))
    else:
        lines.append(f"Another rank's loss was non-finite (see its message); this rank's terms: {values}.")
    if report is not None and report.spikes:
        lines.append(_spikes_line(report))
    lines.append("Likely fixes: " + "; ".join(_fixes(trainer)) + ".")
    lines.append(_checkpoint_hint(trainer, report))  # last: it ends with the arguments to resume with
    return "\n".join(lines)


def _recovery(trainer: pl.Trainer | None) -> NonFiniteRecovery | None:
    for callback in getattr(trainer, "callbacks", None) or []:
        if isinstance(callback, NonFiniteRecovery):
            return callback
    return None


def _format(value: Tensor) -> str:
    value = value.detach()
    if value.numel() == 1:
        return f"{value.float().item():.6g}"
    finite = torch.isfinite(value)
    return f"<{tuple(value.shape)} tensor, {int((~finite).sum())} non-finite>"


def _spikes_line(report: RecoveryReport) -> str:
    spikes = report.spikes
    shown = ", ".join(f"step {s.step}: {s.loss:.3g}" for s in spikes[:4]) + (f" and {len(spikes) - 4} more" if len(spikes) > 4 else "")
    return (
        f"The loss spiked before it became non-finite ({shown}; the median of the steps before step {spikes[0].step} "
        f"was {spikes[0].median:.3g}): the weights were probably diverging from step {spikes[0].step} on."
    )


def _checkpoint_hint(trainer: pl.Trainer | None, report: RecoveryReport | None = None) -> str:
    callbacks = list(getattr(trainer, "checkpoint_callbacks", None) or []) if trainer is not None else []
    if not callbacks:
        return (
            "No checkpoint callback is configured, so nothing to resume from; add periodic checkpoints with "
            "--config configs/trainer/checkpointing.yaml."
        )
    if report is not None:
        return _checked_hint(trainer, report)
    paths = set()
    for callback in callbacks:
        paths |= {getattr(callback, "last_model_path", ""), getattr(callback, "best_model_path", "")}
        paths |= set(getattr(callback, "best_k_models", {}) or {})
    existing = [p for p in paths if p and os.path.exists(p)]
    if not existing:
        return "No checkpoint was written before this step (the first periodic checkpoint comes later)."
    newest = max(existing, key=os.path.getmtime)
    # ModelCheckpoint remembers the step of its latest save in this launch (0 before the first one).
    saved_steps = [getattr(c, "_last_global_step_saved", 0) for c in callbacks]
    step = f" (step {max(saved_steps)})" if max(saved_steps, default=0) > 0 else ""
    hint = (
        f"Newest checkpoint: {newest}{step}, not checked on this batch (add lightning_kd.fault.NonFiniteRecovery to the "
        f"trainer's callbacks to find one that recovers); after fixing the cause, resume with --ckpt_path {newest}."
    )
    return hint + _resume_lines(trainer, newest, None)


def _checked_hint(trainer: pl.Trainer, report: RecoveryReport) -> str:
    """The hint when the checkpoints were tried on the failed batch: each result, the last good one, how to go on."""
    lines = []
    if report.checked:
        shown = "; ".join(_describe_checked(c, report) for c in report.checked[:_SHOWN_CHECKED])
        more = len(report.checked) - _SHOWN_CHECKED
        lines.append(f"Checkpoints tried on the batch that failed, newest first: {shown}" + (f"; and {more} more" if more > 0 else "") + ".")
    good = report.good
    if good is None:
        if not report.checked:
            lines.append("No checkpoint was written before this step (the first periodic checkpoint comes later).")
            if not report.spikes:
                return lines[0]
        else:
            before = f" that was written before the first loss spike (step {report.first_spike})" if report.spikes else ""
            older = f" ({report.skipped} older ones were not tried: give one with --ckpt_path to try it)" if report.skipped else ""
            lines.append(
                f"No checkpoint recovers: none of those{before} gives a finite loss on that batch{older}. Either the weights "
                "diverged before the oldest checkpoint, or this batch itself is bad" + _examples(trainer) + "."
            )
        suggestion = _suggested_rate(trainer, report.start_weight_rms)
        if suggestion is None:
            return "\n".join(lines)
        rate, why = suggestion
        return "\n".join(
            [*lines, *why, "To start again with a lower learning rate, rerun the same command without --ckpt_path, with this argument added:",
             f"  --model.init_args.learning_rate={rate:.3g}"]
        )
    path = str(good.path)
    detail = f"its weights give a finite loss ({good.loss:.3g}) on that batch"
    if report.spikes:
        detail += f" and it predates the first loss spike (step {report.first_spike})"
    lines.append(f"Last good checkpoint: {path} (step {good.step}): {detail}; after fixing the cause, resume with --ckpt_path {path}.")
    newer = [c for c in report.checked if c is not good]
    if newer:
        largest = max((c.largest_weight for c in newer if c.largest_weight is not None), default=None)
        compared = f" (their largest weight is {largest:.3g}, against {good.largest_weight:.3g} here)" if largest and good.largest_weight else ""
        lines.append(
            f"The newer checkpoints hold weights that had already diverged{compared}: resumed from, they fail again at any "
            "learning rate."
        )
    return "\n".join(lines) + _resume_lines(trainer, path, good)


def _describe_checked(checked: CheckedCheckpoint, report: RecoveryReport) -> str:
    step = f" (step {checked.step})" if checked.step is not None and checked.step >= 0 else ""
    if checked.problem is not None:
        return f"{checked.path.name}{step}: {checked.problem}"
    if not checked.finite:
        return f"{checked.path.name}{step}: loss {checked.loss:.3g}"
    late = report.first_spike is not None and checked.step is not None and checked.step >= report.first_spike
    return f"{checked.path.name}{step}: loss {checked.loss:.3g}" + (", but after the first loss spike" if late else "")


def _examples(trainer: pl.Trainer) -> str:
    batch = getattr(_recovery(trainer), "batch", None)
    indices = batch.get("example_index") if isinstance(batch, dict) else None
    if indices is None:
        return ""
    shown = [int(i) for i in indices.flatten()[:8].tolist()]
    return f" (its training examples: {', '.join(map(str, shown))}{', …' if indices.numel() > 8 else ''})"


def _resume_lines(trainer: pl.Trainer, path: str, good: CheckedCheckpoint | None) -> str:
    """The arguments that resume from ``path`` with a lower learning rate (empty when the rate is unknown)."""
    suggestion = _suggested_rate(trainer, good.weight_rms if good is not None else None)
    if suggestion is None:
        return ""
    rate, why = suggestion
    # A plain --ckpt_path restores the optimizer state, and with it the old learning rate: a lower
    # model.learning_rate on the resumed command needs the optimizer rebuilt (lightning_kd.fault.reset_optimizer).
    # `last` where it finds the same file: it also works with plain LightningCLI, which, given a file, puts the
    # checkpoint's model arguments (the old rate) over the command line's (Lightning issue 20801).
    resume_from = "last" if _is_periodic_last(trainer, path) else path
    return "\n" + "\n".join(
        [*why, "To resume with a lower learning rate, rerun the same command with these arguments added:",
         f"  --ckpt_path {resume_from} --trainer.callbacks+=lightning_kd.fault.ResetOptimizerOnResume "
         f"--model.init_args.learning_rate={rate:.3g}"]
    )


def _suggested_rate(trainer: pl.Trainer | None, weight_rms: float | None) -> tuple[float, list[str]] | None:
    """A quarter of the peak rate, at most :data:`WEIGHT_STEP_FRACTION` of the weights' RMS; and why, when capped."""
    peak = _peak_learning_rate(trainer)
    if peak is None:
        return None
    rate = peak / 4
    if weight_rms is not None and weight_rms > 0 and rate > WEIGHT_STEP_FRACTION * weight_rms:
        capped = WEIGHT_STEP_FRACTION * weight_rms
        return capped, [
            f"A quarter of the peak rate ({rate:.3g}) would still move each weight by more than a tenth of its typical size "
            f"(RMS {weight_rms:.3g}) in one AdamW step, so the rate suggested is {capped:.3g}."
        ]
    return rate, []


def _is_periodic_last(trainer: pl.Trainer, path: str) -> bool:
    """Whether ``--ckpt_path last`` finds ``path``: the ``last.ckpt`` of a PeriodicCheckpoint (a directory kept across launches)."""
    directory = Path(path).parent.resolve()
    return Path(path).name == "last.ckpt" and any(
        isinstance(c, PeriodicCheckpoint) and c.dirpath and Path(c.dirpath).resolve() == directory for c in trainer.checkpoint_callbacks
    )


def _fixes(trainer: pl.Trainer | None) -> list[str]:
    fixes = []
    precision = str(getattr(trainer, "precision", "")) if trainer is not None else ""
    if precision.startswith("16"):
        fixes.append(f"use trainer.precision=bf16-mixed instead of {precision} (fp16 overflows at 65504)")
    learning_rate = _learning_rate(trainer)
    fixes.append(
        "lower model.learning_rate"
        + (f" (the current rate is {learning_rate:.3g})" if learning_rate is not None else "")
        + " or raise model.warmup_ratio"
    )
    fixes.append("clip gradients (trainer.gradient_clip_val=1.0)")
    fixes.append("check this batch's inputs and labels (labels outside [0, num_labels), NaN regression targets, empty rows)")
    return fixes


def _peak_learning_rate(trainer: pl.Trainer | None) -> float | None:
    """The schedule's peak rate (what ``model.learning_rate`` sets), for the suggested lower one."""
    try:
        group = trainer.optimizers[0].param_groups[0]
        return float(group.get("initial_lr", group["lr"]))
    except (AttributeError, IndexError, KeyError, TypeError):
        return None


def _learning_rate(trainer: pl.Trainer | None) -> float | None:
    try:
        return float(trainer.optimizers[0].param_groups[0]["lr"])
    except (AttributeError, IndexError, KeyError, TypeError):
        return None

"""Stop a run at the first NaN/inf loss, before the optimizer step, with a message that says what to do.

Raising from ``training_step`` means backward, the optimizer step and every later hook of the step
are skipped: the weights stay those of the last completed step, and ``ModelCheckpoint`` writes
nothing more (it does not save on an exception unless ``save_on_exception=True``, which would then
save these still-finite weights). The check reads the loss on the host, one sync per step; the
progress bar already reads it every step, and on a GPU the sync waits only for the forward pass
the backward pass needs anyway (see ``docs/fault_tolerance.md`` for the measurement).

Only the loss is checked. Under fp16 mixed precision, steps whose *gradients* overflow are skipped by
the loss scaler (Lightning's or DeepSpeed's), which is normal and not an error.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import Tensor

from lightning_kd.fault.periodic_checkpoint import PeriodicCheckpoint


class NonFiniteLossError(FloatingPointError):
    """A training step's loss is NaN or infinite; the run stopped before its optimizer step."""


def check_finite_loss(module: pl.LightningModule, terms: dict[str, Tensor], batch_idx: int) -> None:
    """Raise :class:`NonFiniteLossError` when ``terms["loss"]`` is NaN/inf on any rank.

    Args:
        module: the module being trained (its trainer, if any, supplies step, precision and checkpoints).
        terms: the step's named loss terms from ``compute_losses``, including ``"loss"``.
        batch_idx: index of the batch in the epoch, for the message.
    """
    bad_here = not bool(torch.isfinite(terms["loss"].detach()).all())
    trainer = module._trainer
    # Under DDP every rank must stop together: a rank that stopped alone would leave the others
    # waiting forever in the gradient all-reduce.
    bad = trainer.strategy.reduce_boolean_decision(bad_here, all=False) if trainer is not None else bad_here
    if bad:
        raise NonFiniteLossError(describe_nonfinite_loss(trainer, terms, batch_idx, bad_here))


def describe_nonfinite_loss(trainer: pl.Trainer | None, terms: dict[str, Tensor], batch_idx: int, bad_here: bool = True) -> str:
    """The error message: where it happened, each term's value, the last good checkpoint, and likely fixes."""
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
    lines.append("Likely fixes: " + "; ".join(_fixes(trainer)) + ".")
    lines.append(_checkpoint_hint(trainer))  # last: it ends with the arguments to resume with
    return "\n".join(lines)


def _format(value: Tensor) -> str:
    value = value.detach()
    if value.numel() == 1:
        return f"{value.float().item():.6g}"
    finite = torch.isfinite(value)
    return f"<{tuple(value.shape)} tensor, {int((~finite).sum())} non-finite>"


def _checkpoint_hint(trainer: pl.Trainer | None) -> str:
    callbacks = list(getattr(trainer, "checkpoint_callbacks", None) or []) if trainer is not None else []
    if not callbacks:
        return (
            "No checkpoint callback is configured, so nothing to resume from; add periodic checkpoints with "
            "--config configs/trainer/checkpointing.yaml."
        )
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
    hint = f"Last good checkpoint: {newest}{step}; after fixing the cause, resume with --ckpt_path {newest}."
    peak = _peak_learning_rate(trainer)
    if peak is None:
        return hint
    # A plain --ckpt_path restores the optimizer state, and with it the old learning rate: a lower
    # model.learning_rate on the resumed command needs the optimizer rebuilt (lightning_kd.fault.reset_optimizer).
    # `last` rather than the file: given a file, LightningCLI 2.6 puts the checkpoint's model arguments
    # (the old rate) over the command line's (Lightning issue 20801).
    resume_from = "last" if _is_periodic_last(trainer, newest) else newest
    return (
        f"{hint}\nTo resume with a lower learning rate, rerun the same command with these arguments added:\n"
        f"  --ckpt_path {resume_from} --trainer.callbacks+=lightning_kd.fault.ResetOptimizerOnResume "
        f"--model.init_args.learning_rate={peak / 4:.3g}"
    )


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

"""What ``--ckpt_path`` resumes from, checked before the run starts.

Lightning 2.6 treats ``ckpt_path="last"`` with no last checkpoint as "start from scratch" after a
warning about ``ModelCheckpoint(save_last=True)``, so a user who asked to resume (and forgot the
checkpointing preset, or changed ``default_root_dir``) trains a new model without noticing; a
``ckpt_path`` file that does not exist fails with a long traceback. :func:`resolve_ckpt_path` makes
both one-sentence errors that say where it looked, and adds ``auto``: resume from the last
checkpoint when there is one, else start afresh (for job scripts that relaunch the same command).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint, OnExceptionCheckpoint
from pytorch_lightning.utilities import rank_zero_info

from lightning_kd.errors import UserInputError
from lightning_kd.fault.checkpoint_files import describe_missing_checkpoint

#: ``--ckpt_path auto``: ``last`` when a last checkpoint exists, else no checkpoint (a new run).
AUTO = "auto"
#: Values Lightning resolves itself.
_LIGHTNING_KEYWORDS = ("last", "best", "hpc")


def resolve_ckpt_path(trainer: pl.Trainer, ckpt_path: str | os.PathLike | None) -> str | os.PathLike | None:
    """The ``ckpt_path`` to hand to Lightning, or a :class:`UserInputError` when it names nothing.

    * ``auto``: ``"last"`` when a last checkpoint exists, else ``None`` (said in one line);
    * ``last``: refused when no checkpoint callback finds a last checkpoint (the message names the
      directories it looked in, and why they may be empty);
    * a local path: refused when it does not exist (the message lists the checkpoints beside it);
    * anything else (``best``, ``hpc``, ``registry…``, ``s3://…``): unchanged, Lightning checks it.

    Call it after the trainer is built and before ``fit``/``validate``/… (checkpoint callbacks resolve
    ``last`` before any ``setup`` hook; the same is done here).
    """
    if ckpt_path is None:
        return None
    text = str(ckpt_path)
    if text == AUTO:
        found = last_checkpoints(trainer)
        rank_zero_info(
            f"--ckpt_path auto: resuming from {max(found, key=os.path.getmtime)}" if found
            else f"--ckpt_path auto: no last checkpoint in {_places(trainer) or 'any checkpoint directory'}, so this run starts afresh"
        )
        return "last" if found else None
    if text == "last":
        if not last_checkpoints(trainer):
            raise UserInputError(_nothing_to_resume(trainer))
        return ckpt_path
    if text in _LIGHTNING_KEYWORDS or text.startswith("registry") or "://" in text:
        return ckpt_path
    path = Path(text)
    if not path.exists():
        raise UserInputError(describe_missing_checkpoint(path))
    return ckpt_path


def last_checkpoints(trainer: pl.Trainer) -> set[str]:
    """The last checkpoints ``ckpt_path="last"`` would choose from (what Lightning 2.6 looks for)."""
    found: set[str] = set()
    for callback in trainer.callbacks:
        if isinstance(callback, OnExceptionCheckpoint):
            found.add(callback.ckpt_path)
        elif isinstance(callback, ModelCheckpoint):
            found |= callback._find_last_checkpoints(trainer)  # PeriodicCheckpoint sets its default directory here
    return {p for p in found if p and "://" not in str(p) and os.path.exists(p)}


def _places(trainer: pl.Trainer) -> str:
    directories = []
    for callback in trainer.checkpoint_callbacks:
        directory = callback.dirpath or _logger_checkpoint_dir(trainer)
        if directory not in directories:
            directories.append(str(directory))
    return ", ".join(directories)


def _logger_checkpoint_dir(trainer: pl.Trainer) -> str:
    """Where a ``ModelCheckpoint`` without ``dirpath`` writes (Lightning's rule, computed without creating anything)."""
    if not trainer.loggers:
        return os.path.join(trainer.default_root_dir, "checkpoints")
    logger = trainer.loggers[0]
    version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
    return os.path.join(logger.save_dir or trainer.default_root_dir, str(logger.name), version, "checkpoints")


def _nothing_to_resume(trainer: pl.Trainer) -> str:
    start = "--ckpt_path last: there is nothing to resume"
    fresh = "start without --ckpt_path, or use --ckpt_path auto (resume when there is a last checkpoint, else start afresh)"
    if not trainer.checkpoint_callbacks:
        return f"{start}: this run has no checkpoint callback (trainer.enable_checkpointing is off); {fresh}."
    places = _places(trainer)
    text = f"{start}: no last.ckpt in {places}."
    preset = (
        "add --config configs/trainer/checkpointing.yaml (a last.ckpt in "
        f"{os.path.join(trainer.default_root_dir, 'checkpoints')}, the same folder for every launch)"
    )
    if all(c.dirpath is None for c in trainer.checkpoint_callbacks) and trainer.loggers:
        text += (
            " That is Lightning's default place, the logger's version_<n> folder, which is new at every launch, so it never "
            f"holds an earlier launch's checkpoints: {preset}."
        )
    elif not any(getattr(c, "save_last", None) for c in trainer.checkpoint_callbacks):
        text += f" The checkpoint callback writes no last.ckpt (save_last is off, as in Lightning's default): {preset}."
    else:
        text += " Check --trainer.default_root_dir (is it the earlier run's?)."
    return f"{text} To train from the beginning, {fresh}."

"""Resume with a new learning rate: keep weights and data position, rebuild optimizer and schedule from the current config.

A plain ``--ckpt_path`` resume restores the optimizer (AdamW moments, each group's ``lr`` and
``initial_lr``) and the scheduler (its ``base_lrs``) from the checkpoint, so a lower
``model.learning_rate`` given on the resumed command has no effect: a run stopped by a NaN loss
resumes at the old rate and hits the same NaN. :class:`ResetOptimizerOnResume` replaces both by
what the current config builds, with the schedule positioned at the resumed step.

It works through Lightning's hooks only: ``on_fit_start`` runs after ``configure_optimizers`` built
the new optimizer and scheduler and before Lightning restores the checkpoint's state into them, so
their fresh states are copied there; ``on_train_start`` runs after the restore and loads the copies
back.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import DeepSpeedStrategy
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn

#: The method hyper-parameters that shape the optimizer and schedule (``DistillationModule``'s).
OPTIMIZER_HPARAMS = ("learning_rate", "weight_decay", "adam_epsilon", "lr_schedule", "warmup_ratio", "final_lr_ratio")


class ResetOptimizerOnResume(pl.Callback):
    """On a resumed fit, start the optimizer and learning-rate schedule afresh from the current config.

    Kept from the checkpoint: weights, global step, data position, callback states, loss scaler.
    Rebuilt: optimizer state (AdamW moments are zero again) and hyper-parameters (the new learning
    rate, weight decay, …), and the scheduler, which **continues at the resumed step** with the new
    peak rate: no new warm-up (if the step is still inside the warm-up, the warm-up goes on from
    there), and the decay still ends at ``max_steps``. The position is set by putting the scheduler
    at the step before and stepping it once, which is exact for schedules computed from the step
    number (the ``LambdaLR`` lightning_kd builds, ``CosineAnnealingLR``, …).

    The reset happens once per change of settings: the checkpoints written afterwards record the
    settings they were trained with, and resuming one of them with the same settings restores its
    optimizer as usual, so relaunching the same command after a pre-emption resumes exactly. Change
    the settings again (another, lower rate) and the next resume resets again.

    Use: ``lightning-kd fit … --ckpt_path last --trainer.callbacks+=lightning_kd.fault.ResetOptimizerOnResume
    --model.init_args.learning_rate <lower>``. On a fit without ``--ckpt_path`` it does nothing. Not
    supported under DeepSpeed, whose engine owns the optimizer state. ``lightning-kd`` keeps the
    command line's model arguments when ``--ckpt_path`` names a file (plain LightningCLI 2.6 would
    put the checkpoint's hyper-parameters over them); when the settings it rebuilds from are exactly
    the checkpoint's, this callback says that only the optimizer state is reset.
    """

    def __init__(self) -> None:
        self._previous: dict[str, Any] | None = None  # what the checkpoint's run recorded, if it had this callback
        self._settings: Any = None
        self._reset_at_step: int | None = None
        self._fresh: tuple[list[dict], list[dict]] | None = None
        self._checkpoint_hparams: dict[str, Any] = {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and isinstance(trainer.strategy, DeepSpeedStrategy):
            raise ValueError(
                "ResetOptimizerOnResume does not work under DeepSpeed, whose engine restores the optimizer state itself; "
                "remove it, or resume without DeepSpeed."
            )

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # configure_optimizers has just built them from the current config; the checkpoint is not restored yet.
        self._settings = optimizer_settings(trainer, pl_module)
        self._fresh = None
        if not trainer.ckpt_path:
            rank_zero_info("ResetOptimizerOnResume: not resuming (no --ckpt_path), nothing to reset.")
            return
        previous = self._previous or {}
        if previous.get("settings") == self._settings:
            self._reset_at_step = previous.get("reset_at_step")
            rank_zero_info(
                "ResetOptimizerOnResume: the checkpoint was trained with these optimizer settings already; its optimizer "
                "state is restored as usual."
            )
            return
        if self._checkpoint_hparams and self._checkpoint_hparams == self._settings["hparams"]:
            rank_zero_warn(
                "ResetOptimizerOnResume: the optimizer settings are the checkpoint's own "
                f"({', '.join(f'{k}={v}' for k, v in self._checkpoint_hparams.items())}), so only the optimizer state "
                "(AdamW moments) is reset; give e.g. --model.init_args.learning_rate to change the rate."
            )
        self._fresh = (
            [copy.deepcopy(optimizer.state_dict()) for optimizer in trainer.optimizers],
            [copy.deepcopy(config.scheduler.state_dict()) for config in trainer.lr_scheduler_configs],
        )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning has restored the checkpoint's optimizer and scheduler states by now; put the fresh ones back.
        if self._fresh is None:
            return
        optimizer_states, scheduler_states = self._fresh
        self._fresh = None
        for optimizer, state in zip(trainer.optimizers, optimizer_states):
            optimizer.load_state_dict(state)
        for config, state in zip(trainer.lr_scheduler_configs, scheduler_states):
            scheduler = config.scheduler
            resumed = scheduler.last_epoch  # the restored position: scheduler steps taken so far
            scheduler.load_state_dict(state)
            scheduler.last_epoch = resumed - 1
            with warnings.catch_warnings():
                # The step only positions the schedule; torch would warn that no optimizer step preceded it.
                warnings.simplefilter("ignore", UserWarning)
                scheduler.step()
        self._reset_at_step = trainer.global_step
        rates = ", ".join(f"{group['lr']:.3g}" for group in trainer.optimizers[0].param_groups) if trainer.optimizers else "-"
        rank_zero_info(
            f"ResetOptimizerOnResume: resumed at step {trainer.global_step} with a fresh optimizer and schedule from the current "
            f"config (learning rate now {rates})."
        )

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        # The settings the checkpoint's run was built with, to tell the user when nothing changed.
        saved = checkpoint.get("hyper_parameters") or {}
        self._checkpoint_hparams = {key: saved[key] for key in OPTIMIZER_HPARAMS if key in saved}

    def state_dict(self) -> dict[str, Any]:
        if self._settings is None:
            return {}
        return {"settings": self._settings, "reset_at_step": self._reset_at_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._previous = dict(state_dict)


def optimizer_settings(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
    """What decides the freshly built optimizer and schedule: the method's optimizer hyper-parameters and each
    parameter group's hyper-parameters (learning rate, weight decay, betas, …)."""
    hparams = getattr(pl_module, "hparams", {}) or {}
    # Plain values (a fused or capturable optimizer keeps its rate as a tensor), so settings compare with ==.
    groups = [
        [{key: _plain(value) for key, value in group.items() if key != "params"} for group in optimizer.param_groups]
        for optimizer in trainer.optimizers
    ]
    return {"hparams": {key: hparams[key] for key in OPTIMIZER_HPARAMS if key in hparams}, "param_groups": groups}


def _plain(value: Any) -> Any:
    return value.tolist() if isinstance(value, torch.Tensor) else value

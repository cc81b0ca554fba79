"""The ``lightning-kd`` command: LightningCLI with ``fit``/``validate``/``test``/``predict``.

Example::

    lightning-kd fit --config configs/quickstart/2_distil_student.yaml

The data module names the tokenizer once; it is linked to the method (saved with the exported
student), and the data's head and label count are linked to the method, so a config never repeats
them. Unknown keys are rejected by the parser with the closest valid ones, and a mistake in the input
(a bad value, a missing file, a malformed data row) is reported as one sentence without a traceback
(``lightning_kd.errors``; ``--debug`` shows it). ``trainer.precision: auto`` picks what the hardware
runs natively (``lightning_kd.precision``), and ``progress:`` prints progress lines into logs.
"""

from __future__ import annotations

import os

from jsonargparse import ArgumentError
from pytorch_lightning import LightningDataModule, LightningModule, Trainer
from pytorch_lightning.accelerators import CPUAccelerator
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from lightning_kd.callbacks.export_student import ExportStudent
from lightning_kd.callbacks.progress_log import ProgressLog
from lightning_kd.config_keys import describe_parse_error
from lightning_kd.cpu_allocator import keep_freed_memory
from lightning_kd.errors import input_errors, reporting_errors, user_errors
from lightning_kd.fault.atomic_io import install_atomic_checkpoint_io
from lightning_kd.fault.interrupted import exit_if_interrupted
from lightning_kd.trainer import AutoPrecisionTrainer


class DistillationCLI(LightningCLI):
    """LightningCLI with lightning_kd's argument links, the student export, periodic checkpoints
    (``checkpoint:``), progress lines (``progress:``), atomic checkpoint files and, on CPU, an
    allocator that keeps freed memory. Inside ``lightning_kd.errors.user_errors`` (the
    ``lightning-kd`` command) parse and construction errors become one-sentence ``UserInputError``s."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(ExportStudent, "export")
        # Its own key, not an entry of trainer.callbacks: YAML lists replace each other, so a method
        # config listing its schedule callbacks would silently drop a preset's checkpoint callback.
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint", subclass_mode=True, required=False)
        parser.add_lightning_class_args(ProgressLog, "progress")
        parser.link_arguments("data.init_args.tokenizer", "model.init_args.export_tokenizer")
        parser.link_arguments("data.task_head", "model.init_args.task_head", apply_on="instantiate")
        parser.link_arguments("data.num_labels", "model.init_args.num_labels", apply_on="instantiate")

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        # Raised only inside user_errors (exit_on_error=False there); otherwise jsonargparse prints and exits.
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as error:
            raise describe_parse_error(error, lambda: self._subcommand_keys(parser)) from error

    def _subcommand_keys(self, parser: LightningArgumentParser) -> list[str]:
        """Every key a subcommand accepts (``trainer.max_epochs``, ``model``, …), to suggest from."""
        parsers = getattr(self, "_subcommand_parsers", None) or {None: parser}
        return sorted({key for each in parsers.values() for key in each.get_defaults().keys()})

    def instantiate_classes(self) -> None:
        with input_errors():  # a constructor's ValueError, unwrapped from jsonargparse's errors
            super().instantiate_classes()

    def instantiate_trainer(self, **kwargs) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        install_atomic_checkpoint_io(trainer)  # unless trainer.plugins or the strategy names a checkpoint IO
        if isinstance(trainer.accelerator, CPUAccelerator):
            keep_freed_memory()  # CPU steps stop re-faulting their memory (lightning_kd/cpu_allocator.py)
        return trainer

    def _parse_ckpt_path(self) -> None:
        # LightningCLI (2.6) re-parses the model's hyper-parameters stored in a --ckpt_path *file* over
        # the command line, so `--model.init_args.learning_rate` (a resume after a NaN) or any other
        # changed model argument would be silently dropped. The command line is what the user asked
        # for: a resume is "the same command plus --ckpt_path", and `--ckpt_path last` never did this.
        return

    def _instantiate_trainer(self, config: dict, callbacks: list[Callback | None]) -> Trainer:
        # An optional callback key (``checkpoint``) that no config set contributes None.
        return super()._instantiate_trainer(config, [c for c in callbacks if c is not None])


def run_cli(args: list[str] | None = None, run: bool = True) -> DistillationCLI:
    """Parse ``args`` (default: the command line), build the objects and run the subcommand.

    Returns the CLI object (``.model``, ``.datamodule``, ``.trainer``) for use from Python and tests.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return DistillationCLI(
        # The base LightningModule, not DistillationModule: with the latter, jsonargparse lets the base's
        # ``prediction=None`` default override each method's own default.
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        run=run,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        trainer_class=AutoPrecisionTrainer,
        parser_kwargs=_parser_kwargs(),
    )


def _parser_kwargs() -> dict:
    # Under user_errors a parse error is raised (and reported in one sentence) instead of printing the usage.
    if not reporting_errors():
        return {}
    return {"exit_on_error": False, **{name: {"exit_on_error": False} for name in DistillationCLI.subcommands()}}


def main() -> None:
    """Entry point of ``lightning-kd`` and ``python -m lightning_kd``.

    Exit status 0 on success; an interrupted run exits 143 (SIGTERM) or 130 (Ctrl-C) after saying which
    checkpoint to resume from (Lightning itself would exit 0 after SIGTERM: see lightning_kd.fault.interrupted).
    A mistake in the input exits 2 with one sentence (lightning_kd.errors; ``--debug`` shows the traceback).
    """
    with user_errors(), exit_if_interrupted():
        run_cli()

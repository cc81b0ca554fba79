"""``DistillationCLI``: the LightningCLI behind ``lightning-kd`` (``lightning_kd.cli`` is the light entry point).

The data module names the tokenizer once; it is linked to the method (saved with the exported
student), and the data's head and label count are linked to the method, so a config never repeats
them. Unknown keys are rejected by the parser with the closest valid ones (never an argparse-style
abbreviation), and a mistake in the input (a bad value, a missing file, a malformed data row) is
reported as one sentence without a traceback (``lightning_kd.errors``; ``--debug`` shows it).
``trainer.precision: auto`` picks what the hardware runs natively (``lightning_kd.precision``), and
``progress:`` prints progress lines into logs.
"""

from __future__ import annotations

import importlib
import os

from jsonargparse import ArgumentError, DefaultHelpFormatter
from pytorch_lightning import LightningDataModule, LightningModule, Trainer
from pytorch_lightning.accelerators import CPUAccelerator
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from lightning_kd.callbacks.export_student import ExportStudent
from lightning_kd.callbacks.progress_log import ProgressLog
from lightning_kd.callbacks.run_directories import RunDirectories
from lightning_kd.config_keys import describe_parse_error
from lightning_kd.cpu_allocator import keep_freed_memory
from lightning_kd.errors import input_errors, reporting_errors
from lightning_kd.fault.atomic_io import install_atomic_checkpoint_io
from lightning_kd.fault.recovery import NonFiniteRecovery
from lightning_kd.fault.resume import resolve_ckpt_path
from lightning_kd.startup.help import methods_epilog
from lightning_kd.startup.signals import end_startup
from lightning_kd.trainer import AutoPrecisionTrainer

#: Imported before parsing, so a config's ``class_path: KD`` (a short name) resolves (jsonargparse looks the
#: name up among the loaded subclasses of LightningModule / LightningDataModule).
_NAMED_CLASSES = ("lightning_kd.methods", "lightning_kd.data.glue", "lightning_kd.data.pretrain", "lightning_kd.data.causal_lm")
DESCRIPTION = "Knowledge distillation of Hugging Face models with PyTorch Lightning (lightning-kd --help lists the methods)."


class DistillationCLI(LightningCLI):
    """LightningCLI with lightning_kd's argument links, the student export, periodic checkpoints
    (``checkpoint:``), progress lines (``progress:``), atomic checkpoint files, a NaN stop that finds a
    checkpoint which recovers, one run per directory, checked ``--ckpt_path`` values and, on CPU, an
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
        # The teachers' own tokenizers: the data module writes their encodings, the method hands them to the
        # teachers. Data modules without the knob (yours, say) simply have no second encoding.
        parser.link_arguments("data", "model.init_args.teacher_tokenizer", compute_fn=teacher_encodings_of, apply_on="instantiate")

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        for module in _NAMED_CLASSES:
            try:
                importlib.import_module(module)
            except ImportError:  # a data module another installation lacks: its names just do not resolve
                pass
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
        callbacks = trainer.callbacks
        if not any(isinstance(c, RunDirectories) for c in callbacks):
            callbacks.insert(0, RunDirectories())  # first: it locks the directories before any other callback writes
        if not any(isinstance(c, NonFiniteRecovery) for c in callbacks):
            callbacks.insert(1, NonFiniteRecovery())
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

    # LightningCLI calls before_<subcommand>() right before running it.
    def before_fit(self) -> None:
        self._before_run()

    def before_validate(self) -> None:
        self._before_run()

    def before_test(self) -> None:
        self._before_run()

    def before_predict(self) -> None:
        self._before_run()

    def _before_run(self) -> None:
        """Check ``--ckpt_path`` (``last`` with nothing to resume, a missing file, ``auto``), then hand SIGTERM to Lightning."""
        config = self.config_init[self.subcommand]
        if "ckpt_path" in config:
            config["ckpt_path"] = resolve_ckpt_path(self.trainer, config["ckpt_path"])
        if self.subcommand == "fit":
            for callback in self.trainer.callbacks:
                if isinstance(callback, RunDirectories):
                    callback.remember_missing(self.trainer)  # Lightning creates the logger's folder before any setup hook
        end_startup()


class _HelpFormatter(DefaultHelpFormatter):
    """jsonargparse's help formatter, keeping the line breaks of descriptions and epilogs (the method table)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "".join(indent + line for line in text.splitlines(keepends=True))


def teacher_encodings_of(data: LightningDataModule) -> object:
    """The ``teacher_tokenizer`` a data module encodes for (``None`` for one without the knob)."""
    return getattr(data, "teacher_encodings", None)


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
    # No argparse abbreviations (`--trainer.max_step` must not become max_steps); the methods listed under
    # `fit --help`; under user_errors a parse error is raised (and reported in one sentence) instead of
    # printing the usage.
    common = {"allow_abbrev": False, "formatter_class": _HelpFormatter}
    if reporting_errors():
        common["exit_on_error"] = False
    subcommands = {name: dict(common) for name in DistillationCLI.subcommands()}
    for options in subcommands.values():
        options["epilog"] = methods_epilog()
    return {"description": DESCRIPTION, **common, **subcommands}

"""Export a student from a checkpoint: ``python -m lightning_kd.export``.

Example::

    python -m lightning_kd.export --config outputs/runs/kd/config.yaml \\
        --ckpt_path outputs/runs/kd/checkpoints/last.ckpt --dirpath outputs/kd_student

``--config`` is the run's configuration: the ``config.yaml`` LightningCLI saved in the run's log
directory, or the ``--config`` files the run was started with (repeat the flag, in the same order).
Arguments after ``--`` are passed on like ``lightning-kd`` arguments, e.g. ``--
--model.init_args.teacher=new/place`` when a teacher has moved.

A checkpoint holds the student and the method's own parameters but never a teacher, so the method
is built from the configuration exactly as the run built it (teachers included), then restored the
way Lightning restores a module (``on_load_checkpoint``, then ``load_state_dict``), then exported
with the method's own ``export_student``. Every method therefore exports as it would at the end of
``fit`` (VocabDistil, for instance, with its compressed vocabulary and remapped tokenizer).
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path

import yaml
from pytorch_lightning import Trainer
from pytorch_lightning.cli import LightningCLI

from lightning_kd.core.export_target import ExportTargetError, check_export_target
from lightning_kd.fault.atomic_io import AtomicCheckpointIO, CorruptCheckpointError


def export_from_checkpoint(configs: list[str | Path], ckpt_path: str | Path, dirpath: str | Path, overrides: list[str] | None = None) -> Path:
    """Build the run's method from ``configs`` (+ ``overrides``), load ``ckpt_path`` into it and export the student.

    Args:
        configs: the run's config files (its saved ``config.yaml``, or the files it was started with).
        ckpt_path: a ``.ckpt`` file written by the run.
        dirpath: the export directory: new, empty or an earlier export, and not the run's own directories.
        overrides: ``lightning-kd`` arguments applied after the configs.

    Returns:
        the export directory.
    """
    from lightning_kd.cli import run_cli

    checkpoint_file = Path(ckpt_path)
    if checkpoint_file.is_dir():
        raise ValueError(
            f"{checkpoint_file} is a directory (a DeepSpeed checkpoint); convert it to one file first with "
            "pytorch_lightning.utilities.deepspeed.convert_zero_checkpoint_to_fp32_state_dict."
        )
    if not checkpoint_file.is_file():
        raise FileNotFoundError(f"Checkpoint {checkpoint_file} does not exist.")
    args = []
    for config in configs:
        args += ["--config", _without_run_only_keys(Path(config))]
    cli = run_cli(args + list(overrides or []), run=False)
    run_directories = [("checkpoint directory", checkpoint_file.parent), ("default_root_dir", cli.trainer.default_root_dir)]
    run_directories += [("log directory", Path(config).parent) for config in configs if Path(config).name == "config.yaml"]
    check_export_target(dirpath, run_directories)  # before the checkpoint is read: a bad target fails at once

    checkpoint = AtomicCheckpointIO().load_checkpoint(checkpoint_file, map_location="cpu", weights_only=False)
    module = cli.model
    # What Lightning does when it restores a module: the hook first (VocabDistil compresses the
    # student to the checkpoint's vocabulary there), then the weights, all of them (strict).
    module.on_load_checkpoint(checkpoint)
    module.load_state_dict(checkpoint["state_dict"])
    return module.export_student(dirpath)


def _without_run_only_keys(config: Path) -> str:
    """``config``'s text without the keys only ``fit`` takes (``ckpt_path``, ``weights_only``): a saved
    ``config.yaml`` has them, and the parser that builds the objects without running rejects them."""
    if not config.is_file():
        raise FileNotFoundError(f"Config file {config} does not exist.")
    document = yaml.safe_load(config.read_text()) or {}
    fit_only = set(inspect.signature(Trainer.fit).parameters) - {"self"} - LightningCLI.subcommands()["fit"]
    if isinstance(document, dict):
        for key in fit_only:
            document.pop(key, None)
    return yaml.safe_dump(document, sort_keys=False)


def main(argv: list[str] | None = None) -> None:
    """``python -m lightning_kd.export --config CONFIG [--config …] --ckpt_path CKPT --dirpath DIR [-- lightning-kd args]``."""
    parser = argparse.ArgumentParser(prog="python -m lightning_kd.export", description="Export the student of a lightning-kd checkpoint.")
    parser.add_argument("--config", action="append", required=True, help="the run's config.yaml (or its --config files, in order)")
    parser.add_argument("--ckpt_path", required=True, help="a checkpoint file the run wrote")
    parser.add_argument("--dirpath", required=True, help="where to write the student (new, empty or an earlier export)")
    parser.epilog = "Arguments after `--` are lightning-kd arguments applied after the configs (e.g. -- --model.init_args.teacher=DIR)."
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    options = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    try:
        target = export_from_checkpoint(options.config, options.ckpt_path, options.dirpath, extra)
    except (ExportTargetError, CorruptCheckpointError, FileNotFoundError, ValueError) as error:
        parser.exit(2, f"error: {error}\n")
    print(f"Exported the student of {options.ckpt_path} to {target}")


if __name__ == "__main__":
    main()

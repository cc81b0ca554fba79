"""``lightning-kd --help`` (printed before anything heavy loads) and the method list ``fit --help`` ends with."""

from __future__ import annotations

import shutil
import textwrap

from lightning_kd.startup.catalog import Entry, data_modules, methods

SUBCOMMANDS = {
    "fit": "train the student and export it (the usual command)",
    "validate": "evaluate the student on the validation data",
    "test": "evaluate the student on the test data",
    "predict": "write the student's predictions for the test data",
}


def entry_table(entries: tuple[Entry, ...], indent: int = 2) -> str:
    """One line per entry: its name, then its description wrapped to the terminal width."""
    width = max(len(e.name) for e in entries) + 2
    columns = max(60, min(shutil.get_terminal_size((100, 24)).columns, 120))
    lines = []
    for entry in entries:
        wrapped = textwrap.wrap(entry.summary or "-", columns - indent - width) or ["-"]
        lines.append(" " * indent + entry.name.ljust(width) + wrapped[0])
        lines += [" " * (indent + width) + more for more in wrapped[1:]]
    return "\n".join(lines)


def methods_epilog() -> str:
    """The list of methods and data modules, for the end of ``lightning-kd fit --help``."""
    return (
        "methods (--model <name>; --model.help <name> lists a method's arguments):\n"
        + entry_table(methods())
        + "\n\ndata modules (--data <name>; --data.help <name>):\n"
        + entry_table(data_modules())
    )


def top_level_help(program: str = "lightning-kd") -> str:
    """``lightning-kd --help``: the subcommands, every method and data module, where to read on."""
    subcommands = "\n".join(f"  {name:<10}{text}" for name, text in SUBCOMMANDS.items())
    return f"""usage: {program} [-h] [-c CONFIG] {{fit,validate,test,predict}} [--config FILE] [--key value ...] [--debug]

Knowledge distillation of Hugging Face models with PyTorch Lightning: every method, both stages
(task fine-tuning and pre-training), configured with YAML files and --key value overrides.

subcommands ({program} <subcommand> --help lists all of its arguments):
{subcommands}

{methods_epilog()}

options:
  -h, --help            show this help and exit
  -c, --config FILE     a YAML configuration (repeat it: later files and --key value arguments override earlier ones)
  --print_config        print the full configuration after all arguments, and exit
  --debug               show the traceback of an error (or set LIGHTNING_KD_DEBUG=1)

examples:
  {program} fit --config configs/quickstart/2_distil_student.yaml
  {program} fit --config configs/trainer/cpu.yaml --config configs/trainer/checkpointing.yaml \\
      --config configs/finetune/kd/minilm_l3_from_minilm_l6.yaml --trainer.default_root_dir outputs/runs/kd
  {program} fit --model KD --model.help KD
  {program} fit ... --ckpt_path last          resume an interrupted run (auto: resume if possible, else start)

exit status: 0 done; 1 a bug (traceback); 2 refused before any work (a wrong input, a directory in use);
3 the run stopped itself and says where to resume (non-finite loss, checkpoint or export write failed);
130 Ctrl-C; 143 SIGTERM. Documentation: README.md, docs/ (docs/fault_tolerance.md for checkpoints and resuming).
"""

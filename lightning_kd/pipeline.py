"""Run an ordered chain of ``fit`` stages described in one YAML file (TAKD, DGKD, any multi-step recipe).

Example::

    python -m lightning_kd.pipeline configs/pipelines/takd.yaml
    python -m lightning_kd.pipeline configs/pipelines/takd.yaml --dry-run
    python -m lightning_kd.pipeline configs/pipelines/takd.yaml --start-at student -- --trainer.max_epochs=3

A pipeline file::

    output_dir: outputs/pipelines/takd        # optional: where stages export by default
    defaults:                                 # optional: given to every stage, before its own
      config: [configs/trainer/gpu.yaml]
      overrides: {data: lightning_kd.data.GlueDataModule, data.task: sst2}
    stages:
      - name: ta
        config: configs/gkd/takd/1_finetune_ta.yaml        # one path or a list
      - name: student
        config: configs/gkd/takd/2_finetune_student.yaml
        overrides:
          model.init_args.teacher: ${stages.ta.export}

Each stage runs ``lightning-kd fit`` in this process with its ``--config`` files, then its overrides
as ``--key=value`` arguments (non-string values as JSON), then the extra command-line arguments.
``${stages.<name>.export}`` is the directory an earlier stage exported its student to: its
``export.dirpath`` override, else the last ``export.dirpath`` in its config files, else
``<output_dir>/<name>``. Every config file and every reference is checked before anything runs.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lightning_kd.config_keys import mapping_key_problem

REFERENCE = re.compile(r"\$\{([^}]*)\}")
STAGE_REFERENCE = re.compile(r"stages\.([A-Za-z0-9_.-]+?)\.export")
EXPORT_KEY = "export.dirpath"


class PipelineError(ValueError):
    """A pipeline file that cannot run (raised before any stage starts), or a stage that failed.

    Attributes:
        status: the exit status ``python -m lightning_kd.pipeline`` ends with (2, or the stage's own).
    """

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Stage:
    """One ``fit`` run of a pipeline.

    Attributes:
        name: the stage's name (``${stages.<name>.export}`` refers to it).
        configs: ``--config`` files, in order (the pipeline's defaults first).
        overrides: ``key: value`` arguments after the config files (defaults first, then the stage's).
        export: the directory the stage exports its student to.
    """

    name: str
    configs: list[Path]
    overrides: dict[str, Any] = field(default_factory=dict)
    export: str = ""

    def references(self) -> list[str]:
        """Names of the stages this stage's overrides refer to."""
        found = []
        for text in _strings(self.overrides):
            for reference in REFERENCE.findall(text):
                match = STAGE_REFERENCE.fullmatch(reference)
                if match:
                    found.append(match.group(1))
        return found

    def args(self, exports: dict[str, str]) -> list[str]:
        """The ``fit`` arguments, with every ``${stages.<name>.export}`` replaced by ``exports[name]``."""
        args = ["fit"]
        for config in self.configs:
            args += ["--config", str(config)]
        for key, value in _substitute(self.overrides, exports).items():
            args.append(f"--{key}={value if isinstance(value, str) else json.dumps(value)}")
        return args + [f"--{EXPORT_KEY}={self.export}"]


def load_pipeline(path: str | Path) -> list[Stage]:
    """Read and check a pipeline file: known keys, existing config files, references to earlier stages.

    Raises:
        PipelineError: naming the stage and the problem, before anything runs.
    """
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"Pipeline file {str(path)!r} does not exist.")
    document = yaml.safe_load(path.read_text()) or {}
    _check_keys(document, {"output_dir", "defaults", "stages"}, f"{path}")
    defaults = document.get("defaults") or {}
    _check_keys(defaults, {"config", "overrides"}, f"{path}: defaults")
    if EXPORT_KEY in (defaults.get("overrides") or {}):
        raise PipelineError(f"{path}: defaults.overrides sets {EXPORT_KEY}, which would send every stage's student to one place; set it per stage.")
    output_dir = Path(document.get("output_dir") or Path("outputs/pipelines") / path.stem)
    entries = document.get("stages")
    if not isinstance(entries, list) or not entries:
        raise PipelineError(f"{path}: `stages` must be a non-empty list of {{name, config, overrides}}.")

    stages: list[Stage] = []
    for number, entry in enumerate(entries, start=1):
        where = f"{path}: stage {number}"
        if not isinstance(entry, dict):
            raise PipelineError(f"{where} must be a mapping with name, config and overrides.")
        _check_keys(entry, {"name", "config", "overrides"}, where)
        name = entry.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            raise PipelineError(f"{where}: `name` must be a word of letters, digits, '_' or '-', got {name!r}.")
        if any(s.name == name for s in stages):
            raise PipelineError(f"{where}: stage name {name!r} is used twice.")
        configs = [Path(c) for c in _as_list(defaults.get("config")) + _as_list(entry.get("config"))]
        if not _as_list(entry.get("config")):
            raise PipelineError(f"{where} ({name}): `config` is missing; give the method config to run.")
        for config in configs:
            if not config.is_file():
                raise PipelineError(f"Stage {name!r}: config file {str(config)!r} does not exist (paths are relative to {Path.cwd()}).")
        overrides = {**_mapping(defaults.get("overrides"), f"{path}: defaults.overrides"), **_mapping(entry.get("overrides"), f"{where}: overrides")}
        stage = Stage(name, configs, overrides)
        for text in _strings(overrides):
            for reference in REFERENCE.findall(text):
                match = STAGE_REFERENCE.fullmatch(reference)
                if not match:
                    raise PipelineError(f"Stage {name!r}: unknown reference ${{{reference}}}; only ${{stages.<name>.export}} exists.")
                if match.group(1) not in {s.name for s in stages}:
                    later = match.group(1) in {e.get("name") for e in entries if isinstance(e, dict)}
                    why = "runs later (or is this stage)" if later else "does not exist"
                    raise PipelineError(f"Stage {name!r} refers to stage {match.group(1)!r}, which {why}; a stage can use earlier stages' exports only.")
        stage.export = str(overrides.pop(EXPORT_KEY, None) or _config_export(configs) or output_dir / name)
        stages.append(stage)
    return stages


def run_pipeline(
    path: str | Path, extra_args: list[str] | None = None, start_at: str | None = None, dry_run: bool = False
) -> dict[str, Path]:
    """Run the stages of a pipeline file in order, in this process.

    Args:
        path: the pipeline YAML.
        extra_args: CLI arguments appended to every stage (e.g. ``--trainer.max_epochs=3``).
        start_at: skip the stages before this one (their exports must already exist).
        dry_run: print each stage's command instead of running it.

    Returns:
        Each stage's export directory, by stage name.
    """
    from lightning_kd.cli import run_cli
    from lightning_kd.fault.interrupted import exit_status, interruption_signal

    extra_args = list(extra_args or [])
    if any(a.startswith(f"--{EXPORT_KEY}") for a in extra_args):
        raise PipelineError("--export.dirpath would send every stage's student to one place; set it per stage in the pipeline file.")
    stages = load_pipeline(path)
    exports = {s.name: s.export for s in stages}
    names = [s.name for s in stages]
    if start_at is not None and start_at not in names:
        raise PipelineError(f"--start-at {start_at!r} is not a stage of {path}; stages: {names}.")
    first = names.index(start_at) if start_at else 0
    for stage in stages[first:]:
        for needed in stage.references():
            if names.index(needed) < first and not dry_run and not Path(exports[needed]).is_dir():
                raise PipelineError(f"Stage {stage.name!r} needs {needed!r}'s export at {exports[needed]}, which does not exist; run that stage first.")
    for stage in stages[first:]:
        args = stage.args(exports) + extra_args
        print(f"[lightning_kd.pipeline] stage {stage.name}: lightning-kd {shlex.join(args)}", flush=True)
        if dry_run:
            continue
        saved_argv, sys.argv = sys.argv, sys.argv[:1]  # the stage's arguments are `args`, not this command line
        try:
            run_cli(args)
        except SystemExit as exit_info:
            # SIGTERM ends a fit with a SystemExit whose code is None: not a success (lightning_kd.fault.interrupted).
            received = interruption_signal(exit_info)
            if received is not None:
                raise PipelineError(
                    f"Stage {stage.name!r} was interrupted by {received.name}; the later stages did not run.", exit_status(received)
                ) from exit_info
            if exit_info.code not in (0, None):
                status = exit_info.code if isinstance(exit_info.code, int) else 1
                raise PipelineError(f"Stage {stage.name!r} failed (exit status {exit_info.code}); the later stages did not run.", status) from exit_info
        except Exception:
            print(f"[lightning_kd.pipeline] stage {stage.name} failed; the later stages did not run.", file=sys.stderr, flush=True)
            raise
        finally:
            sys.argv = saved_argv
        if not Path(stage.export).is_dir():
            raise PipelineError(f"Stage {stage.name!r} finished without exporting its student to {stage.export} (export.enabled off?).")
    return {name: Path(directory) for name, directory in exports.items()}


def main(argv: list[str] | None = None) -> None:
    """``python -m lightning_kd.pipeline PIPELINE.yaml [--dry-run] [--start-at NAME] [-- extra CLI args]``."""
    parser = argparse.ArgumentParser(prog="python -m lightning_kd.pipeline", description="Run a chain of lightning-kd fit stages.")
    parser.add_argument("pipeline", help="the pipeline YAML (e.g. configs/pipelines/takd.yaml)")
    parser.add_argument("--start-at", help="skip the stages before this one (their exports must exist)")
    parser.add_argument("--dry-run", action="store_true", help="print each stage's command without running it")
    parser.epilog = "Arguments after `--` are appended to every stage's command (e.g. -- --trainer.max_epochs=3)."
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    options = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    try:
        run_pipeline(options.pipeline, extra, options.start_at, options.dry_run)
    except PipelineError as error:
        parser.exit(error.status, f"error: {error}\n")


# ---------------------------------------------------------------------- helpers
def _check_keys(mapping: Any, allowed: set[str], where: str) -> None:
    problem = mapping_key_problem(mapping, allowed, where)
    if problem is not None:
        raise PipelineError(problem)


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise PipelineError(f"{where} must be a mapping of dotted keys to values, e.g. model.init_args.teacher: <path>.")
    return {str(k): v for k, v in value.items()}


def _strings(value: Any):
    """Every string inside a nested value (dict values, list items)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _substitute(value: Any, exports: dict[str, str]) -> Any:
    if isinstance(value, str):
        return REFERENCE.sub(lambda m: exports[STAGE_REFERENCE.fullmatch(m.group(1)).group(1)], value)
    if isinstance(value, dict):
        return {k: _substitute(v, exports) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, exports) for v in value]
    return value


def _config_export(configs: list[Path]) -> str | None:
    """The last ``export.dirpath`` set in the config files, if any."""
    found = None
    for config in configs:
        document = yaml.safe_load(config.read_text()) or {}
        export = document.get("export") if isinstance(document, dict) else None
        if isinstance(export, dict) and export.get("dirpath"):
            found = str(export["dirpath"])
    return found


if __name__ == "__main__":
    main()

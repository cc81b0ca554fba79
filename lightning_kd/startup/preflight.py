"""Checks of the command line made before torch and Lightning load, so a refused command answers at once.

Building the real parser needs every class the configuration names, which means importing torch,
Lightning and transformers: 6 to 9 seconds before even a misspelt key could be reported. What can
be decided from the words and the YAML files alone is checked here first, in well under a second:

* ``lightning-kd --help`` (printed here), a missing or unknown subcommand;
* a YAML syntax error in a ``--config`` file (file, line, column);
* an unknown top-level key or section, and an unknown ``trainer.*`` argument, with the closest
  valid keys; an abbreviation (``--trainer.max_step``) is never taken for the full key;
* an unknown method or data module, listing the closest ones; a short name (``--model KD``,
  ``--model.help KD``) is replaced by its class path, which the parser needs;
* a ``--ckpt_path`` file that does not exist.

Whatever is not certain here (a class outside lightning_kd, a value that needs the class's
signature) is left to the parser: these checks refuse only what the parser would refuse too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning_kd.config_keys import closest, or_list, unknown_key
from lightning_kd.errors import UserInputError
from lightning_kd.fault.checkpoint_files import describe_missing_checkpoint
from lightning_kd.startup import catalog
from lightning_kd.startup.command_line import SUBCOMMANDS, CommandLine, Option, split
from lightning_kd.startup.config_files import load_config
from lightning_kd.startup.help import top_level_help
from lightning_kd.startup.trainer_keys import trainer_arguments

#: The top-level keys every subcommand takes, and those only some take (``tests/test_cli_startup.py``
#: checks these against the parser).
COMMON_KEYS = frozenset(
    {"config", "print_config", "help", "seed_everything", "trainer", "model", "data", "export", "checkpoint", "progress",
     "ckpt_path", "weights_only"}
)
SUBCOMMAND_KEYS = {"fit": frozenset(), "validate": frozenset({"verbose"}), "test": frozenset({"verbose"}),
                   "predict": frozenset({"return_predictions"})}
#: ``--ckpt_path`` values that are not files.
CKPT_KEYWORDS = ("last", "best", "hpc", "auto")
_CLASS_SECTIONS = {"model": ("method", catalog.methods), "data": ("data module", catalog.data_modules)}
_YAML_SUFFIXES = (".yaml", ".yml")


def preflight(words: list[str]) -> list[str]:
    """Check ``words`` (the command line after the program name) and return them with short class names expanded.

    Raises:
        SystemExit: 0 after printing ``lightning-kd --help``.
        UserInputError: the command would be refused; the message says why and what to write instead.
    """
    line = split(words)
    if line.subcommand is None:
        if any(option.key == "help" for option in line.before):
            print(top_level_help())
            raise SystemExit(0)
        if line.unknown_subcommand is not None:
            suggestion = closest(line.unknown_subcommand, SUBCOMMANDS)
            hint = f"; did you mean {or_list(suggestion)}?" if suggestion else "."
            raise UserInputError(
                f"Unknown subcommand {line.unknown_subcommand!r}{hint} The subcommands are fit, validate, test and predict "
                "(`lightning-kd --help` lists them and the methods)."
            )
        if not any(option.key == "print_config" for option in line.before):
            raise UserInputError("Name a subcommand: fit, validate, test or predict (`lightning-kd --help` lists them and the methods).")
        return line.words
    checks = _Checks(line, COMMON_KEYS | SUBCOMMAND_KEYS[line.subcommand])
    for option in line.before:
        if option.key == "config" and option.value is not None:
            document = load_config(option.value)
            if isinstance(document, dict) and isinstance(document.get(line.subcommand), dict):
                checks.document(document[line.subcommand], option.value)
    for option in line.options:
        checks.option(option)
    checks.ckpt_path()
    return line.words


class _Checks:
    """The checks of one command line, in the order jsonargparse applies its parts (later ones override)."""

    def __init__(self, line: CommandLine, keys: frozenset[str]) -> None:
        self.line, self.keys = line, keys
        self.method: tuple[str, str, list[str]] | None = None  # (class path, where, init_args given as blocks)
        self.checkpoint: str | None = None

    def option(self, option: Option) -> None:
        section, _, rest = option.key.partition(".")
        value = option.value
        if option.key == "config":
            if value is not None:
                self.document(load_config(value), value)
            return
        if section not in self.keys:
            raise unknown_key(option.key, _valid_keys(self.keys))
        if section == "ckpt_path":
            self.checkpoint = value
        if value is None:
            return
        if rest == "" and section in ("trainer", *_CLASS_SECTIONS) and value.endswith(_YAML_SUFFIXES) and Path(value).is_file():
            self.document({section: load_config(value, f"--{section}")}, value)
            return
        if section == "trainer" and rest:
            _check_trainer_key(rest.split(".", 1)[0], None)
        if section in _CLASS_SECTIONS and rest in ("", "class_path", "help"):
            expanded = _class_path(section, value, f"--{option.key}")
            if expanded is not None and expanded != value:
                self.line.replace(option, expanded)
            if section == "model" and rest != "help":
                self.switch_method(expanded or value, f"--{option.key}", [])

    def document(self, document: Any, source: str) -> None:
        """The keys and class names of one config document (a mapping of top-level keys)."""
        if not isinstance(document, dict):
            return
        for key, value in document.items():
            key = str(key)
            if key not in self.keys:
                raise unknown_key(key, _valid_keys(self.keys), where=source)
            if key == "trainer" and isinstance(value, dict):
                for name in value:
                    _check_trainer_key(str(name), source)
            if key == "ckpt_path":
                self.checkpoint = None if value is None else str(value)
            if key in _CLASS_SECTIONS:
                class_path = value.get("class_path") if isinstance(value, dict) else value
                if isinstance(class_path, str):
                    expanded = _class_path(key, class_path, f"{key} in {source}") or class_path
                    if key == "model":
                        arguments = value.get("init_args") if isinstance(value, dict) else None
                        blocks = [k for k, v in (arguments or {}).items() if isinstance(v, dict) and "class_path" not in v]
                        self.switch_method(expanded, source, blocks)

    def switch_method(self, class_path: str, where: str, blocks: list[str]) -> None:
        """Note the method ``where`` names. jsonargparse keeps a config's arguments when the command line switches
        to another method, but cannot carry a nested block (``prediction:``) over: it then fails with an internal
        ``Namespace(...)`` dump. Such a switch is refused here, saying what to write instead."""
        previous = self.method
        if previous is not None and previous[2] and previous[0] != class_path and not blocks:
            old, new = previous[0].rsplit(".", 1)[-1], class_path.rsplit(".", 1)[-1]
            listed = ", ".join(f"{b}:" for b in previous[2])
            raise UserInputError(
                f"{where} {new} switches the method from {old} (set in {previous[1]}), whose {listed} block cannot be "
                f"carried over to another method. Name {new} in a config instead (model: class_path: "
                f"{class_path}, with its own init_args), or start from a config written for {new} (configs/finetune/, "
                "configs/gkd/)."
            )
        self.method = (class_path, where, blocks)

    def ckpt_path(self) -> None:
        value = self.checkpoint
        if value is None or value in CKPT_KEYWORDS or value.startswith("registry") or "://" in value or value in ("null", "None", ""):
            return
        if not Path(value).exists():
            raise UserInputError(describe_missing_checkpoint(value))


def _check_trainer_key(name: str, source: str | None) -> None:
    known = trainer_arguments()
    if known is None or name in known or name == "help":
        return
    raise unknown_key(f"trainer.{name}", [f"trainer.{k}" for k in known], where=source)


def _valid_keys(keys: frozenset[str]) -> list[str]:
    """The keys to suggest from: the top-level ones, ``trainer.<argument>`` for each Trainer argument."""
    return sorted(keys - {"help"}) + [f"trainer.{k}" for k in sorted(trainer_arguments() or ())]


def _class_path(section: str, value: str, where: str) -> str | None:
    """The class path ``value`` names in ``section`` (``model``/``data``); ``None`` when it is not ours to check.

    Raises:
        UserInputError: an unknown method or data module, with the closest names and the list.
    """
    kind, entries_of = _CLASS_SECTIONS[section]
    entries = entries_of()
    own_prefix = "lightning_kd.methods." if section == "model" else "lightning_kd.data."
    if "." in value and not value.startswith(own_prefix):
        return None  # a class of another package (or a file): the parser checks it
    if value.startswith(("{", "[")) or Path(value).suffix in _YAML_SUFFIXES:
        return None
    entry = catalog.find(value, entries)
    if entry is not None:
        return entry.class_path
    other_section, (other_kind, other_entries) = next((k, v) for k, v in _CLASS_SECTIONS.items() if k != section)
    if catalog.find(value, other_entries()) is not None:
        raise UserInputError(f"{where}: {value!r} is a {other_kind}, not a {kind}; give it as --{other_section} {value}.")
    names = [e.name for e in entries]
    suggestion = catalog.closest(value, entries)
    hint = f"; did you mean {or_list(suggestion)}?" if suggestion else "."
    raise UserInputError(
        f"{where}: unknown {kind} {value.rsplit('.', 1)[-1]!r}{hint} The {kind}s: {', '.join(names)} "
        "(`lightning-kd --help` describes each)."
    )

"""A parse error of the ``lightning-kd`` command as one sentence: the offending key, and for a
misspelt key the closest valid ones (``Unknown key model.init_args.temprature; did you mean temperature?``).

jsonargparse reports a bad value inside nested errors, one per level ('Parser key "model"' →
"Problem with given class_path 'lightning_kd.methods.KD'" → "Option 'temprature' is not accepted"),
each raised from the next. :func:`describe_parse_error` walks that cause chain to rebuild the full
key and the class it belongs to, then asks jsonargparse for that class's keys to suggest from.
The phrases matched are jsonargparse's (4.x); tests/test_cli_errors.py fails if an upgrade rewords
them, and a message no pattern matches is still shown, only without suggestions.

Suggestions are always keys that exist, at the level of the unknown one: a misspelt section is
answered with the section (``trainr.max_epochs`` → ``trainer.max_epochs`` only when that key exists,
else ``trainer``), and an abbreviation (``max_step``) is named as one, never silently completed
(the parser runs with ``allow_abbrev=False``). :func:`unknown_key` is also what the start-up checks
(:mod:`lightning_kd.startup.preflight`) answer with, so both say the same; this module imports
jsonargparse only when a parse error is described.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import re
import typing
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from lightning_kd.errors import UserInputError, exception_chain

if TYPE_CHECKING:
    from jsonargparse import ArgumentError

_PARSER_KEY = re.compile(r'Parser key "([^"]+)"')
_CLASS_PATH = re.compile(r"Problem with given class_path '([^']+)'")
_NOT_ACCEPTED = re.compile(r"Option '([^']+)' is not accepted")
_SUBCOMMAND_OPTION = re.compile(r"Subcommand '[^']+' does not accept option '([^']+)'")
_GROUP_OPTION = re.compile(r"Group '([^']+)' does not accept option '([^']+)'")
_UNRECOGNIZED = re.compile(r"unrecognized arguments: (.*)")
_NO_ATTRIBUTE = re.compile(r"module '([\w.]+)' has no attribute '(\w+)'")
_INTERNAL_VALUE = re.compile(r"\.?\s*Got value: Namespace\(.*", re.DOTALL)
_MAX_LISTED = 12
#: LightningCLI's optimizer sections, which the CLI does not add (methods configure their own optimizer).
_OPTIMIZER_SECTIONS = ("optimizer", "lr_scheduler")
#: Top-level keys that hold a class (their own keys are the class's arguments, not listed among a command's keys).
_CLASS_SECTIONS = ("model", "data", "checkpoint")


def describe_parse_error(error: ArgumentError, top_level_keys: Callable[[], Iterable[str]]) -> UserInputError:
    """One sentence for a jsonargparse parse error.

    Args:
        error: what the parser raised (``exit_on_error=False``).
        top_level_keys: the subcommand's own keys (``trainer.max_epochs``, ``model``, …), asked
            for only when a key outside any class is unknown.
    """
    parts: list[str] = []
    class_path: str | None = None
    chain = list(exception_chain(error))
    previous = None
    for link in chain:
        message = str(link).strip()
        if message == previous:  # jsonargparse re-raises a level's message unchanged (TypeError → ArgumentError)
            continue
        previous = message
        if match := _PARSER_KEY.match(message):
            parts.append(match[1])
        elif match := _CLASS_PATH.match(message):
            parts.append("init_args")
            class_path = match[1]
        elif match := _NOT_ACCEPTED.match(message):
            key = ".".join([*parts, match[1]])
            if class_path:  # an init argument of that class: compare with its argument names
                return _unknown_key(key, match[1], class_keys(class_path), moved_keys(class_path))
            return _unknown_key(key, key, list(top_level_keys()))
        elif match := _SUBCOMMAND_OPTION.match(message):
            return _unknown_key(match[1], match[1], list(top_level_keys()))
        elif match := _GROUP_OPTION.match(message):
            key = f"{match[1]}.{match[2]}"
            return _unknown_key(key, key, list(top_level_keys()))
        elif match := _UNRECOGNIZED.match(message):
            flags = [word for word in match[1].split() if word.startswith("--")]
            if flags:
                key = flags[0][2:].split("=", 1)[0].rstrip("+")
                if class_path:  # an argument of that class, nested or not (``prediction.temprature``)
                    return _unknown_key(".".join([*parts, key]), key, class_keys(class_path), moved_keys(class_path))
                return _unknown_key(key, key, list(top_level_keys()))
    leaf = _without_internals(str(chain[-1]).strip())
    if match := _NO_ATTRIBUTE.search(leaf):
        leaf += _class_hint(match[1], match[2])
    if parts and parts[-1] == "init_args":  # the class itself was wrong, not one of its arguments
        parts.pop()
    return UserInputError(leaf, where=".".join(parts) or None)


def _without_internals(message: str) -> str:
    """jsonargparse's message without its internal parts: a ``Got value: Namespace(...)`` dump and the list of
    forms a subclass value may take."""
    message = _INTERNAL_VALUE.sub(".", message.split("\nSubclass types expect one of:")[0]).strip()
    return message.replace("..", ".")


def class_keys(class_path: str) -> list[str]:
    """The init-argument names of ``class_path`` as jsonargparse sees them (``[]`` if it cannot be imported).

    Nested arguments are named as a config writes them (``prediction.temperature``, never
    ``prediction.init_args.temperature``).
    """
    from jsonargparse import ArgumentParser

    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
        parser = ArgumentParser(exit_on_error=False)
        parser.add_class_arguments(cls, fail_untyped=False)
        keys = [key.replace(".init_args.", ".") for key in parser.get_defaults().keys()]
        keys = [key for key in keys if key.rpartition(".")[2] not in ("class_path", "__subclasses_disabled__")]
    except Exception:  # only a hint: a class jsonargparse cannot describe gets the message without it
        return []
    return keys + [key for key in _dataclass_argument_keys(cls) if key not in keys]


def _dataclass_argument_keys(cls: type) -> list[str]:
    """``argument.field`` for each constructor argument typed as a dataclass (or ``… | None``): the
    nested keys jsonargparse does not list when the default is ``None``."""
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # only a hint
        return []
    keys = []
    for name, hint in hints.items():
        for candidate in (hint, *typing.get_args(hint)):
            if dataclasses.is_dataclass(candidate) and isinstance(candidate, type):
                keys += [f"{name}.{field.name}" for field in dataclasses.fields(candidate)]
    return keys


def moved_keys(class_path: str) -> dict[str, str]:
    """``{old argument: its key now}`` a class declares in ``moved_arguments`` (``{}`` if none)."""
    module, _, name = class_path.rpartition(".")
    try:
        return dict(getattr(getattr(importlib.import_module(module), name), "moved_arguments", {}))
    except Exception:  # only a hint
        return {}


def mapping_key_problem(mapping: object, allowed: Iterable[str], where: str) -> str | None:
    """What is wrong with the keys of one mapping in a YAML file we read ourselves (a pipeline, the
    leaderboard), as one sentence naming ``where``; ``None`` when nothing is. The caller raises it as
    its own error type."""
    if not isinstance(mapping, dict):
        return f"{where} must be a mapping."
    unknown = sorted(set(mapping) - set(allowed))
    if unknown:
        return f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}."
    return None


def closest(word: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """Up to ``n`` candidates that look like ``word`` (difflib ratio ≥ 0.6), best first."""
    return difflib.get_close_matches(word, list(candidates), n=n, cutoff=0.6)


def unknown_key(key: str, valid: Iterable[str], where: str | None = None) -> UserInputError:
    """The error for an unknown top-level ``key`` (``trainer.max_step``, ``trainr.max_epochs``, ``seed``) given
    the ``valid`` keys of that command (``trainer.max_steps``, ``model``, …); ``where``: the config file it is in."""
    error = _unknown_key(key, key, sorted(set(valid)))
    return UserInputError(error.message, where=where) if where else error


def _unknown_key(key: str, word: str, valid: list[str], moved: dict[str, str] | None = None) -> UserInputError:
    """``key`` is unknown; suggest the entries of ``valid`` closest to ``word`` (the part the user may have misspelt).

    A ``word`` that is an argument nested one level down (``temperature`` of ``prediction``), or one
    the class says has moved (``moved``: ``alpha_ce`` → ``prediction.soft_weight``), is pointed there.
    A ``word`` that starts one or more valid keys is answered as the abbreviation it is.
    """
    section, _, rest = key.partition(".")
    sections = {k.split(".", 1)[0] for k in valid}
    if section in _OPTIMIZER_SECTIONS and section not in sections:
        return UserInputError(
            f"Unknown key {key}: LightningCLI's `{section}:` section is not used here. A method builds its own "
            "AdamW and warm-up/decay schedule from model.init_args (learning_rate, weight_decay, adam_epsilon, "
            "lr_schedule, warmup_ratio, final_lr_ratio); set those, or subclass the method and override "
            "configure_optimizers."
        )
    level = [k for k in valid if k.count(".") == word.count(".")]
    prefix = word.rpartition(".")[0]
    abbreviated = [k for k in level if k.startswith(word) and k.rpartition(".")[0] == prefix]
    nested = [k for k in valid if "." in k and k.split(".", 1)[1] == word]
    if moved and word in moved:
        matches = [moved[word]]
    elif abbreviated:
        return UserInputError(f"Unknown key {key}; did you mean {_or(abbreviated)}? (Keys cannot be abbreviated.)")
    elif nested:
        matches = nested
    elif word == key and rest and section not in sections:  # a misspelt section (``trainr.max_epochs``)
        # Only keys that can hold ``rest``: sections with keys of their own, or a class (``model``, ``data``, …).
        holders = {k.split(".", 1)[0] for k in valid if "." in k} | (sections & set(_CLASS_SECTIONS))
        roots = closest(section, holders)
        whole = [f"{root}.{rest}" for root in roots if f"{root}.{rest}" in valid]
        if whole:
            matches = whole
        elif roots:
            return UserInputError(f"Unknown key {key}: there is no section {section!r}; did you mean {_or(roots)}?")
        else:
            matches = []
    else:  # keys at the word's own level under the same parent, else one level down (``temprature`` → ``prediction.temperature``)
        siblings = {k.rpartition(".")[2]: k for k in level if k.rpartition(".")[0] == prefix}
        matches = [siblings[m] for m in closest(word.rpartition(".")[2], siblings)] or _close_below(word, valid)
    if matches:
        return UserInputError(f"Unknown key {key}; did you mean {_or(matches)}?")
    if not valid:
        return UserInputError(f"Unknown key {key}.")
    listed = sorted(valid)
    more = f", … ({len(listed) - _MAX_LISTED} more; see --help)" if len(listed) > _MAX_LISTED else ""
    return UserInputError(f"Unknown key {key}; valid keys here: {', '.join(listed[:_MAX_LISTED])}{more}.")


def _close_below(word: str, valid: list[str]) -> list[str]:
    """Keys one level below ``word``'s, under the same parent, whose last part looks like ``word``'s last part."""
    prefix, _, last = word.rpartition(".")
    below = [k for k in valid if k.count(".") == word.count(".") + 1 and (not prefix or k.startswith(f"{prefix}."))]
    return [k for k in below if closest(last, [k.rpartition(".")[2]])][:3]


def _class_hint(module: str, name: str) -> str:
    try:
        names = [n for n in dir(importlib.import_module(module)) if not n.startswith("_")]
    except Exception:  # only a hint
        return ""
    matches = closest(name, names)
    return f"; did you mean {_or([f'{module}.{m}' for m in matches])}?" if matches else ""


def _or(words: list[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


or_list = _or

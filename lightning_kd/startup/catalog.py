"""The methods and data modules ``--model`` / ``--data`` accept, read from the source without importing it.

``lightning_kd/methods/__init__.py``'s import list is the method registry; each class's docstring
starts with its one-line description. Parsing those files with :mod:`ast` takes milliseconds, where
importing them loads torch and transformers (seconds), so the command can list, resolve and suggest
method names before anything heavy is loaded. ``tests/test_cli_startup.py`` checks that this
catalog matches the imported classes.
"""

from __future__ import annotations

import ast
import difflib
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parents[1]
_MARKUP = re.compile(r":\w+:`~?([^`]+)`|``([^`]+)``")


@dataclass(frozen=True)
class Entry:
    """One class the command line can name.

    Attributes:
        name: the class name (what ``--model <name>`` accepts).
        class_path: the import path jsonargparse needs (``lightning_kd.methods.KD``).
        summary: the first line of its docstring.
    """

    name: str
    class_path: str
    summary: str


@lru_cache(maxsize=None)
def methods() -> tuple[Entry, ...]:
    """Every distillation method, in the registry's order."""
    return tuple(_entries("methods", "lightning_kd.methods", lambda name: True))


@lru_cache(maxsize=None)
def data_modules() -> tuple[Entry, ...]:
    """Every data module ``lightning_kd.data`` exports."""
    return tuple(_entries("data", "lightning_kd.data", lambda name: name.endswith("DataModule")))


def find(name: str, entries: tuple[Entry, ...]) -> Entry | None:
    """The entry named ``name`` (its class name, any case, or its full class path), or ``None``."""
    for entry in entries:
        if name in (entry.name, entry.class_path):
            return entry
    folded = name.rsplit(".", 1)[-1].casefold() if name.startswith(("lightning_kd.",)) else name.casefold()
    matches = [entry for entry in entries if entry.name.casefold() == folded]
    return matches[0] if len(matches) == 1 else None


def closest(name: str, entries: tuple[Entry, ...], n: int = 3) -> list[str]:
    """Up to ``n`` entry names that look like ``name`` (case-insensitive), best first."""
    word = name.rsplit(".", 1)[-1].casefold()
    by_fold = {entry.name.casefold(): entry.name for entry in entries}
    starting = [by_fold[f] for f in by_fold if f.startswith(word)] if len(word) >= 3 else []
    similar = [by_fold[m] for m in difflib.get_close_matches(word, list(by_fold), n=n, cutoff=0.5)]
    return list(dict.fromkeys(starting + similar))[:n]


def _entries(package: str, import_path: str, wanted) -> list[Entry]:
    """The classes ``lightning_kd/<package>/__init__.py`` exports, with their modules' docstrings."""
    exported = _exports(_PACKAGE / package / "__init__.py", import_path)
    entries = []
    for name, module in exported:
        if not wanted(name):
            continue
        file = _PACKAGE.parent / (module.replace(".", "/") + ".py")
        entries.append(Entry(name, f"{import_path}.{name}", _summary(file, name)))
    return entries


def _exports(init: Path, import_path: str) -> list[tuple[str, str]]:
    """``(name, module)`` for each ``from <module> import <name>`` in ``init``, or each entry of its lazy
    ``_EXPORTS = {"Name": "module"}`` table."""
    tree = ast.parse(init.read_text(encoding="utf-8"))
    found: list[tuple[str, str]] = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(import_path):
            found += [(alias.asname or alias.name, node.module) for alias in node.names]
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Dict):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in targets):
                for key, value in zip(node.value.keys, node.value.values, strict=True):
                    if isinstance(key, ast.Constant) and isinstance(value, ast.Constant):
                        found.append((str(key.value), str(value.value)))
    return found


def _summary(file: Path, name: str) -> str:
    try:
        tree = ast.parse(file.read_text(encoding="utf-8"))
    except (OSError, SyntaxError):
        return ""
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            first = (ast.get_docstring(node) or "").split("\n\n")[0]
            return _MARKUP.sub(lambda m: m.group(1).rsplit(".", 1)[-1] if m.group(1) else m.group(2), " ".join(first.split()))
    return ""

"""The arguments of Lightning's ``Trainer`` (what ``trainer.*`` keys may name), read from its source file.

Importing ``pytorch_lightning`` takes seconds; finding its ``trainer/trainer.py`` and reading the
parameter names of ``Trainer.__init__`` with :mod:`ast` takes milliseconds and gives the same list
(``tests/test_cli_startup.py`` compares it with the parser's keys). ``None`` when the file cannot be
found or read: the check is then left to the parser.
"""

from __future__ import annotations

import ast
import importlib.util
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=None)
def trainer_arguments() -> frozenset[str] | None:
    """The keyword arguments of ``pytorch_lightning.Trainer.__init__`` (``None`` if unknown)."""
    try:
        spec = importlib.util.find_spec("pytorch_lightning")  # the top-level package only: nothing is imported
        locations = list(spec.submodule_search_locations or []) if spec is not None else []
        source = Path(locations[0]) / "trainer" / "trainer.py"
        tree = ast.parse(source.read_text(encoding="utf-8"))
    except (OSError, IndexError, SyntaxError, ValueError, ImportError):
        return None
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "Trainer":
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                    arguments = item.args
                    names = [a.arg for a in (*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs)]
                    return frozenset(name for name in names if name != "self")
    return None

"""Reading the ``--config`` YAML files the way the command needs them: errors name the file, line and column.

jsonargparse reads a config file's text and parses the string, so a YAML syntax error there names
``"<unicode string>"`` instead of the file. :func:`load_config` parses the file itself and reports
``configs/x.yaml, line 4, column 3: mapping values are not allowed here``. Only syntax errors are
reported here; a document that parses is handed to jsonargparse unchanged (which may still accept
constructs a plain ``safe_load`` does not, so nothing else is refused).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from lightning_kd.errors import UserInputError

_SYNTAX_ERRORS = (yaml.scanner.ScannerError, yaml.parser.ParserError, yaml.composer.ComposerError, yaml.reader.ReaderError)


def load_config(path: str | Path, option: str = "--config") -> Any:
    """The parsed document of config file ``path`` (``None`` when it does not parse as plain YAML data).

    Raises:
        UserInputError: the file is missing, unreadable, or not valid YAML (file, line, column and the problem).
    """
    path = Path(path)
    if not path.is_file():
        where = "is a directory" if path.is_dir() else "does not exist"
        raise UserInputError(f"{option} {path}: the config file {where}.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise UserInputError(f"{path}: the config file is not valid UTF-8 (byte {error.start}); save it as UTF-8.") from None
    except OSError as error:
        raise UserInputError(f"{path}: cannot read the config file ({error.strerror}).") from None
    try:
        return yaml.safe_load(text)
    except _SYNTAX_ERRORS as error:
        raise UserInputError(describe_yaml_error(path, error)) from None
    except yaml.YAMLError:  # e.g. a tag plain YAML does not know: jsonargparse decides
        return None


def describe_yaml_error(path: Path, error: yaml.MarkedYAMLError) -> str:
    """``<file>, line L, column C: <problem>`` (and the context the YAML parser gives)."""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None else str(path)
    problem = getattr(error, "problem", None) or str(error)
    context = getattr(error, "context", None)
    context_mark = getattr(error, "context_mark", None)
    detail = f" ({context} at line {context_mark.line + 1})" if context and context_mark is not None and context_mark is not mark else ""
    return f"{where}: {problem}{detail}. The file is not valid YAML; check the indentation and quoting there."

"""How ``lightning-kd`` reports a mistake in its input: the sentence alone, exit status 2, no traceback.

A constructor that refuses a value (a negative temperature, a layer map out of range, a teacher
without the task's head, a malformed data row, …) raises ``ValueError``/``FileNotFoundError`` with a
sentence that says what is wrong and how to fix it. Under ``LightningCLI`` that sentence arrives at
the bottom of a long traceback: jsonargparse re-raises it inside "Does not validate against any of
the Union subtypes" errors that also print the whole config. :func:`user_errors` (used by
:func:`lightning_kd.cli.main`) prints only the sentence and where it applies, then one line on how
to get the traceback (``--debug`` or ``LIGHTNING_KD_DEBUG=1``). A genuine bug (an unexpected
exception type, or a ``ValueError`` raised outside lightning_kd's own code during training) still
shows its traceback.

Which errors count as input errors depends on the phase:

* parsing and building the objects (``DistillationCLI.parse_arguments`` and ``instantiate_classes``
  wrap them with :func:`input_errors`): any :data:`INPUT_ERRORS` instance, wherever raised;
* running the subcommand: :class:`UserInputError`, Lightning's ``MisconfigurationException``, and
  :data:`INPUT_ERRORS` raised by lightning_kd's own code (the data readers' located errors, the
  memory check, a stale teacher cache, an unusable export directory, …).

A :class:`RunFailure` (a non-finite loss, a checkpoint or export that could not be written) is a run
that stopped itself and says what happened and where to resume from: its message alone, exit status 3.

From Python (``run_cli``, ``trainer.fit``) nothing changes: exceptions keep their type and traceback.

This module imports nothing heavy (no torch, no Lightning), so the ``lightning-kd`` command can
report a refused command line before those libraries load.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from types import TracebackType

DEBUG_FLAG = "--debug"
DEBUG_ENV = "LIGHTNING_KD_DEBUG"
#: Exit statuses of ``lightning-kd`` (``docs/fault_tolerance.md`` has the whole table, with 130 and 143).
EXIT_BUG = 1
EXIT_BAD_INPUT = 2
EXIT_RUN_FAILED = 3
#: Exception types that a check of the user's input raises (UnicodeDecodeError is a ValueError); Lightning's
#: ``MisconfigurationException`` counts too (see :func:`input_error_types`).
INPUT_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, MemoryError)
HOW_TO_DEBUG = f"(Run again with {DEBUG_FLAG}, or with {DEBUG_ENV}=1 in the environment, to see the traceback.)"

# Libraries whose exceptions only wrap the user's own (their frames are skipped when looking for the original).
_WRAPPERS = ("jsonargparse", "argparse")
# Inside user_errors: "report" (one sentence), or "debug" (every exception raised as it is); None outside.
_mode: ContextVar[str | None] = ContextVar("lightning_kd_user_errors", default=None)


class RunFailure(Exception):
    """A run that stopped itself and explains why: what happened, what is intact, how to resume.

    Its message is the whole report (no traceback; ``--debug`` shows it) and ``lightning-kd`` exits
    with :data:`EXIT_RUN_FAILED`. Subclasses: ``NonFiniteLossError``, ``CheckpointWriteError``,
    ``ExportFailedError``.
    """


def _misconfiguration() -> tuple[type[BaseException], ...]:
    """Lightning's ``MisconfigurationException`` once Lightning is loaded (none can have been raised
    before), so this module never imports Lightning itself."""
    exceptions = sys.modules.get("lightning_fabric.utilities.exceptions")
    found = getattr(exceptions, "MisconfigurationException", None)
    return (found,) if isinstance(found, type) else ()


def input_error_types() -> tuple[type[BaseException], ...]:
    """:data:`INPUT_ERRORS` plus Lightning's ``MisconfigurationException`` (when Lightning is loaded)."""
    return INPUT_ERRORS + _misconfiguration()


class UserInputError(Exception):
    """A mistake in what the user gave (a config value, a key, a data file), reported as its message alone.

    Args:
        message: what is wrong and how to fix it.
        where: the config key or class the message is about, when the sentence does not name it.
    """

    def __init__(self, message: str, where: str | None = None) -> None:
        super().__init__(message)
        self.message, self.where = message, where

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message


def reporting_errors() -> bool:
    """Whether the caller runs inside :func:`user_errors`: parse errors are then raised, not printed with the usage."""
    return _mode.get() is not None


def debug_requested(argv: list[str]) -> bool:
    """Whether the traceback was asked for; removes ``--debug`` from ``argv`` (in place) so the parser never sees it."""
    flagged = DEBUG_FLAG in argv
    while DEBUG_FLAG in argv:
        argv.remove(DEBUG_FLAG)
    return flagged or os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


@contextmanager
def user_errors(argv: list[str] | None = None) -> Iterator[None]:
    """Report input errors raised inside as ``lightning-kd: error: <message>`` and exit with status 2
    (:data:`EXIT_BAD_INPUT`); a :class:`RunFailure` is reported the same way with status 3 (:data:`EXIT_RUN_FAILED`).

    Args:
        argv: the command line to take ``--debug`` out of (default ``sys.argv``). With ``--debug`` or
            ``LIGHTNING_KD_DEBUG=1`` every exception propagates with its traceback.
    """
    debug = debug_requested(sys.argv if argv is None else argv)
    token = _mode.set("debug" if debug else "report")
    try:
        yield
    except Exception as error:
        if not debug and isinstance(error, RunFailure):  # a run that stopped itself, with its own report
            print(f"lightning-kd: error: {error}", file=sys.stderr)
            raise SystemExit(EXIT_RUN_FAILED) from None
        message = None if debug else short_message(error)
        if message is None:
            raise
        print(f"lightning-kd: error: {message}\n{HOW_TO_DEBUG}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT) from None
    finally:
        _mode.reset(token)


def short_message(error: BaseException) -> str | None:
    """The message to print for ``error`` if it is an input error, else ``None`` (show the traceback)."""
    if isinstance(error, (UserInputError, *_misconfiguration())):
        return str(error)
    if isinstance(error, input_error_types()) and _raised_by(error).startswith("lightning_kd"):
        return str(error)
    return None


@contextmanager
def input_errors() -> Iterator[None]:
    """While parsing or building objects: turn any input error into a :class:`UserInputError`.

    jsonargparse wraps a constructor's exception in its own (often several deep); the one reported
    is the first in the ``__cause__`` chain that jsonargparse did not raise itself. Outside
    :func:`user_errors`, and under ``--debug``, this does nothing: the original exception propagates.
    """
    if _mode.get() != "report":
        yield
        return
    try:
        yield
    except UserInputError:
        raise
    except Exception as error:
        original = original_error(error)
        if not isinstance(original, input_error_types()):
            raise
        raise UserInputError(str(original), where=_built_by(original)) from error


def original_error(error: BaseException) -> BaseException:
    """The first exception in ``error``'s cause chain not raised by jsonargparse/argparse (else the last one)."""
    chain = list(exception_chain(error))
    return next((e for e in chain if not _raised_by(e).startswith(_WRAPPERS)), chain[-1])


def exception_chain(error: BaseException) -> Iterator[BaseException]:
    """``error``, then what it was raised from (``__cause__``, or the implicit ``__context__``), and so on."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)


def _innermost(traceback: TracebackType | None) -> TracebackType | None:
    while traceback is not None and traceback.tb_next is not None:
        traceback = traceback.tb_next
    return traceback


def _raised_by(error: BaseException) -> str:
    """The module whose code raised ``error`` (its innermost traceback frame), or ``""``."""
    innermost = _innermost(error.__traceback__)
    return innermost.tb_frame.f_globals.get("__name__", "") if innermost is not None else ""


def _built_by(error: BaseException) -> str | None:
    """Which object's constructor raised ``error``: ``model (KD)``, ``data (GlueDataModule)``, ``trainer``, a class name."""
    from pytorch_lightning import LightningDataModule, LightningModule, Trainer

    traceback = error.__traceback__
    while traceback is not None:  # the outermost constructor: the object the config asked for, not its parts
        frame = traceback.tb_frame
        instance = frame.f_locals.get("self") if frame.f_code.co_name == "__init__" else None
        if instance is not None and not type(instance).__module__.startswith(_WRAPPERS):
            name = type(instance).__name__
            for base, key in ((LightningModule, "model"), (LightningDataModule, "data")):
                if isinstance(instance, base):
                    return f"{key} ({name})"
            # A part built before its owner (a method's `prediction:` dataclass): name the owner.
            return "trainer" if isinstance(instance, Trainer) else (_owner_being_built(error) or name)
        traceback = traceback.tb_next
    return None


def _owner_being_built(error: BaseException) -> str | None:
    """``model (KD)`` when jsonargparse raised ``error`` while building a model's (or data module's)
    arguments: its frames hold the ``class_path`` they are building. ``None`` when none is found."""
    import importlib

    from pytorch_lightning import LightningDataModule, LightningModule

    traceback = error.__traceback__
    while traceback is not None:
        for value in traceback.tb_frame.f_locals.values():
            class_path = getattr(value, "class_path", None)
            if isinstance(class_path, str) and "." in class_path:
                module, _, name = class_path.rpartition(".")
                try:
                    cls = getattr(importlib.import_module(module), name)
                except Exception:  # only a label
                    continue
                for base, key in ((LightningModule, "model"), (LightningDataModule, "data")):
                    if isinstance(cls, type) and issubclass(cls, base) and cls is not base:
                        return f"{key} ({name})"
        traceback = traceback.tb_next
    return None

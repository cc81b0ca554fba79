"""SIGTERM or Ctrl-C while the command starts up (imports, building the models): a message and 143 / 130.

Lightning installs its own SIGTERM handling only when ``fit`` (or ``validate``, …) begins; before
that, SIGTERM killed the process silently (status 143 from the shell, no word) and Ctrl-C printed a
``KeyboardInterrupt`` traceback from whatever import was running. :func:`startup_signals` covers
that span: the command says it was stopped before any work and exits 143 or 130. :func:`end_startup`
hands SIGTERM back to the default just before Lightning takes over (Lightning calls any handler it
finds installed, and this one would end the run at once instead of at the next batch boundary).
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

_state = {"starting": False, "previous": None}
_MESSAGE = "lightning-kd: interrupted by {name} during start-up, before training began: nothing was trained (exit status {status}); rerun the command."


class StartupInterrupted(SystemExit):
    """The command was stopped by a signal before its run began."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    if _state["starting"]:
        raise StartupInterrupted(128 + signum)


@contextmanager
def startup_signals() -> Iterator[None]:
    """Report SIGTERM and Ctrl-C that arrive before :func:`end_startup` (exit 143 / 130, one line on stderr)."""
    _state["starting"] = True
    installed = False
    try:
        _state["previous"] = signal.signal(signal.SIGTERM, _on_sigterm)
        installed = True
    except ValueError:  # not the main thread: leave signals alone
        pass
    try:
        yield
    except StartupInterrupted as stopped:
        print(_MESSAGE.format(name="SIGTERM", status=stopped.code), file=sys.stderr, flush=True)
        raise SystemExit(stopped.code) from None
    except KeyboardInterrupt:
        if not _state["starting"]:
            raise
        print(_MESSAGE.format(name="Ctrl-C (SIGINT)", status=130), file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    finally:
        if installed and _state["starting"]:
            end_startup()
        _state["starting"] = False


def end_startup() -> None:
    """The run begins: give SIGTERM back to the handler it had before, for Lightning to install its own."""
    if not _state["starting"]:
        return
    _state["starting"] = False
    previous = _state["previous"]
    try:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    except ValueError:  # not the main thread
        pass

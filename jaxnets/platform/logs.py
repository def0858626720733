"""Third-party log and traceback filters: orbax's background-save noise after a real error.

Process-wide (loggers and `sys.unraisablehook` belong to the process), so only the CLI entry
point installs them (`jaxnets.platform.install.install_process_settings`); `jaxnets --debug`
(JAXNETS_DEBUG=1) keeps everything.
"""
from __future__ import annotations

import logging
import os
import sys

# Imported first so the "absl" logger is absl's own class, whose records name the code that
# logged (orbax); a plain logger created by the filter below would name absl's wrapper instead.
import absl.logging  # noqa: F401


class _DropOrbaxTraceback(logging.Filter):
    """orbax logs a failed background save with its traceback before the error reaches the
    trainer, which reports it as one paragraph; keep orbax's one-line log, drop the traceback
    (`jaxnets --debug` keeps it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and "orbax" in record.pathname and not os.environ.get("JAXNETS_DEBUG"):
            record.exc_info, record.exc_text = None, None
        return True


class _DropReadOnlyNotice(logging.Filter):
    """orbax warns that a read-only CheckpointManager's directory is read only: it is on purpose
    (the commands on a trained workdir never write checkpoints)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Given directory is read only")


class _DropOrbaxTaskErrors(logging.Filter):
    """When one write of a save fails, orbax's other write tasks fail the same way and nobody
    awaits them: asyncio logs each ("Task exception was never retrieved", with a traceback)
    whenever the garbage collector reaches it, before or after the trainer's one-paragraph
    error. Those records are dropped unless debugging; asyncio's other records pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        if os.environ.get("JAXNETS_DEBUG") or not record.exc_info:
            return True
        tb = record.exc_info[2]
        while tb is not None:
            if "orbax" in tb.tb_frame.f_code.co_filename:
                return False
            tb = tb.tb_next
        return True


def quiet_third_party_tracebacks() -> None:
    """Install the filters above and the unraisable-exception hook below (once per process)."""
    for name, kind in (("absl", _DropOrbaxTraceback), ("absl", _DropReadOnlyNotice),
                       ("asyncio", _DropOrbaxTaskErrors)):
        logger = logging.getLogger(name)
        if not any(isinstance(f, kind) for f in logger.filters):
            logger.addFilter(kind())
    if not getattr(sys.unraisablehook, "jaxnets_quiet", False):
        sys.unraisablehook = _quiet_unraisable(sys.unraisablehook)


def _quiet_unraisable(previous):
    """After a save fails, TensorStore's pending callbacks still try to reach orbax's closed
    event loop and each print an 'Event loop is closed' traceback as an unraisable exception:
    noise after the real error (reported as one paragraph), dropped unless debugging."""

    def hook(unraisable):
        if (unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == "Event loop is closed"
                and not os.environ.get("JAXNETS_DEBUG")):
            return
        previous(unraisable)

    hook.jaxnets_quiet = True
    return hook

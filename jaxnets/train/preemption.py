"""Stopping a run on request: SIGTERM (preemption) and SIGINT (Ctrl-C) save a checkpoint and exit 0.

`install_early_handlers()` (called by `jaxnets train` first thing) records a SIGTERM or SIGINT
that arrives while the run starts (imports, joining the job, building and restoring the state),
so it is honoured once the loop runs instead of killing the process with nothing saved.

`PreemptionWatch` then answers, before every step, whether to save and stop:
- multi-process: JAX's preemption sync point. JAX's own SIGTERM notifier tells the coordination
  service, and every process returns True at the same step, so all of them save one checkpoint
  together (an orbax save is a collective: a lone saver would deadlock). A Python SIGTERM
  handler would silently replace that notifier, so none is installed; SIGINT is turned into a
  SIGTERM to this process, so Ctrl-C is coordinated the same way. A signal recorded before the
  job was joined is re-sent to this process now that JAX listens.
- single process: Python handlers that only set a flag (read between steps).
Further signals while the save runs only set the flag again: they never cut the save short.
"""
from __future__ import annotations

import os
import signal

from jax._src import distributed
from jax.experimental import multihost_utils

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_early: list[int] = []      # signals received before a PreemptionWatch took over
_early_installed: dict = {}  # signal -> the handler before install_early_handlers
_stopped: list[bool] = []    # a PreemptionWatch answered "stop" in this run


def _record(sig, frame) -> None:
    _early.append(sig)


def install_early_handlers() -> None:
    """Record SIGTERM/SIGINT from now on until a PreemptionWatch starts (idempotent)."""
    _stopped.clear()
    for sig in STOP_SIGNALS:
        if sig not in _early_installed:
            _early_installed[sig] = signal.signal(sig, _record)


def uninstall_early_handlers() -> None:
    """Put back the handlers `install_early_handlers` replaced (the run is over). After a run
    stopped on a signal, further SIGTERM/SIGINT are ignored instead: the process is already
    winding down after its save, and a repeated signal (a scheduler's second SIGTERM, a second
    Ctrl-C) must not turn that clean stop into a death by signal."""
    for sig, previous in _early_installed.items():
        restore = previous if previous is not None else signal.SIG_DFL
        signal.signal(sig, signal.SIG_IGN if _stopped else restore)
    _early_installed.clear()
    _early.clear()


class PreemptionWatch:
    """`watch(step)` -> True when the run should save and stop at `step` (see the module doc)."""

    def __init__(self):
        self.distributed = distributed.global_state.preemption_sync_manager is not None
        self.flag = bool(_early)
        self.previous = {}
        if self.distributed:
            self.previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._forward_as_sigterm)
            if _early:   # JAX's notifier listens now: hand it the signal that came too early
                os.kill(os.getpid(), signal.SIGTERM)
        else:
            for sig in STOP_SIGNALS:
                self.previous[sig] = signal.signal(sig, self._on_signal)
        _early.clear()

    def _on_signal(self, sig, frame) -> None:
        self.flag = True

    @staticmethod
    def _forward_as_sigterm(sig, frame) -> None:
        os.kill(os.getpid(), signal.SIGTERM)

    def __call__(self, step: int) -> bool:
        stop = multihost_utils.reached_preemption_sync_point(step) if self.distributed else self.flag
        if stop:
            _stopped.append(True)
        return stop

    def close(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self.previous = {}

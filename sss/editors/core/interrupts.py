"""Ctrl-C that never leaves an edit half made: interrupts held back across an edit's critical parts.

During an edit (:meth:`Editor.edit`) SIGINT does not raise where it lands. It is recorded and
raised as ``KeyboardInterrupt`` at a *safe point*: where an editor calls :func:`raise_if_interrupted`
(FT-L between optimisation steps, so a long edit still stops promptly), or at the end of the
edit, inside its transaction, which then puts everything back. One that arrives after the
transaction has committed makes the edit undo itself (``undo_on_exit``), so the caller never loses
a handle to an edit that stays applied. Leaving the deferral, SIGINT is blocked (where the system
allows it) while the decision is taken and the undo runs; the previous handler comes back as the
very last step, so no line of the edit runs after a Ctrl-C could raise again.

Signals reach Python's main thread only: elsewhere the deferral does nothing (and needs to do
nothing). Nested deferrals (a session's edit, an edit's block capture) join the outermost one.
"""
from __future__ import annotations

import signal
import threading
from typing import Callable, List, Optional

__all__ = ["DeferredInterrupts", "deferred_interrupts", "raise_if_interrupted"]

_active: List["DeferredInterrupts"] = []  # the outermost deferral of the main thread, if any
_MASKS = hasattr(signal, "pthread_sigmask")


class DeferredInterrupts:
    def __init__(self):
        self.pending = False
        self.undo: Optional[Callable[[], None]] = None
        self.outer = False
        self.joined: Optional["DeferredInterrupts"] = None  # the outermost deferral, when nested in one
        self.previous = None

    def _record(self, signum, frame) -> None:
        self.pending = True

    def check(self) -> None:
        """Raise the held-back interrupt now (a safe point), if there is one."""
        owner = self.joined or self
        if owner.pending:
            owner.pending = False
            raise KeyboardInterrupt

    def undo_on_exit(self, undo: Callable[[], None]) -> None:
        """From here on, an interrupt that arrives before this deferral ends runs ``undo`` first.

        Only for the outermost deferral: a nested one (an edit inside a session) leaves what
        happens to its edit to the one it joined."""
        if self.outer:
            self.undo = undo

    def __enter__(self) -> "DeferredInterrupts":
        if threading.current_thread() is not threading.main_thread():
            return self
        if _active:
            self.joined = _active[0]
            return self
        self.outer = True
        self.previous = signal.signal(signal.SIGINT, self._record)
        _active.append(self)
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if not self.outer:
            return
        raise_now = False
        if _MASKS:  # from here to the end, a Ctrl-C waits in the kernel or is recorded, never raised
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            self._take_blocked_signal()
            raise_now = self.pending and kind is None
            if raise_now and self.undo is not None:
                self.undo()
        finally:
            _active.clear()
            if _MASKS:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # our handler still records
            if raise_now:
                signal.signal(signal.SIGINT, self.previous)
                raise KeyboardInterrupt
            # The last line of an edit: a Ctrl-C recorded after the decision above is dropped (the
            # edit completed and its handle is returned); from here on Ctrl-C raises in the caller.
            signal.signal(signal.SIGINT, self.previous)

    def _take_blocked_signal(self) -> None:
        """A SIGINT that arrived while blocked is this deferral's: take it from the kernel."""
        if _MASKS and signal.SIGINT in signal.sigpending():
            signal.sigwait({signal.SIGINT})
            self.pending = True


def deferred_interrupts() -> DeferredInterrupts:
    """A context that holds SIGINT back (see the module's docstring); ``with ... as d: d.check()``."""
    return DeferredInterrupts()


def raise_if_interrupted() -> None:
    """A safe point: raise the interrupt the running deferral holds back, if any."""
    if _active:
        _active[0].check()

"""Edit sessions: many sequential edits that keep a single pre-session copy of each touched tensor."""
from __future__ import annotations

import copy
from typing import Optional

from .handles import APPLIED, COMMITTED, MERGED, RESTORED, EditHandle, stack_of
from .interrupts import deferred_interrupts

__all__ = ["EditSession"]


class EditSession:
    """Sequential editing with one undo copy: ``with editor.session() as s: s.edit(r1); s.edit(r2)``.

    Each :meth:`edit` is merged into one handle that keeps the pre-session value of every tensor
    touched so far (once), so memory grows with the touched tensors, not with the number of
    edits. :meth:`restore` undoes the whole session bit for bit, :meth:`commit` keeps it; leaving
    the ``with`` block restores unless one of them was called. The handles ``edit`` returns carry
    each edit's requests and info but cannot be restored alone (state ``"merged"``).
    """

    def __init__(self, editor):
        self.editor = editor
        self.handle: Optional[EditHandle] = None  # the merged handle, once there is an edit
        self.edits = 0
        self.state = APPLIED

    def edit(self, requests) -> EditHandle:
        if self.state != APPLIED:
            raise RuntimeError(f"this edit session is {self.state}; start a new one with editor.session()")
        # Ctrl-C is held back (:mod:`.interrupts`) until the edit is merged or undone: an edit left
        # applied on top of the session, unmerged, would make the session impossible to restore.
        with deferred_interrupts() as interrupts:
            handle = self.editor.edit(requests)
            try:
                interrupts.check()  # an interrupt during the edit: undo it below, the session as it was
                self._merge(handle)
            except BaseException:
                if handle.state == APPLIED and stack_of(handle.model).handles()[-1] is handle:
                    handle.restore()  # anything absorbed so far equals the current values: harmless
                raise
            handle._release()
            handle.state = MERGED
            self.edits += 1
            return handle  # inside: no line runs once the interrupt handler is back

    def _merge(self, handle: EditHandle) -> None:
        if self.handle is None:
            merged = copy.copy(handle)  # shares the undo dicts; handle._release() rebinds its own
            merged.requests, merged.info = [], {"session": True}
            stack_of(handle.model).replace(handle, merged)
            self.handle = merged
            return
        stack = stack_of(handle.model)
        live = stack.handles()
        if len(live) < 2 or live[-2] is not self.handle or live[-1] is not handle:
            raise RuntimeError("another edit was applied to this model after the session's last one; "
                               "restore or commit it before editing in the session")
        self.handle._absorb(handle)
        stack.remove(handle)

    def undo_bytes(self) -> int:
        """Bytes the session keeps to undo itself (one copy of each touched tensor)."""
        return 0 if self.handle is None else self.handle.undo_bytes()

    def restore(self) -> None:
        """Undo every edit of the session, bit for bit."""
        self._end("restore", RESTORED)

    def commit(self) -> None:
        """Keep every edit of the session and free its undo copies."""
        self._end("commit", COMMITTED)

    def _end(self, action: str, state: str) -> None:
        """Restore or commit (``action``) the merged handle once, then mark the session ``state``."""
        if self.state != APPLIED:
            raise RuntimeError(f"cannot {action}: this edit session is already {self.state}")
        with deferred_interrupts():  # the handle and the session's state change together
            if self.handle is not None:
                getattr(self.handle, action)()
            self.state = state

    def __enter__(self) -> "EditSession":
        return self

    def __exit__(self, *exc) -> None:
        if self.state == APPLIED:
            self.restore()

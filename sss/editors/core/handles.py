"""Edit handles and the ownership of edits.

The caller owns every handle. Each edited state (a model, or SERAC's memory) has a stack of its
applied edits that holds the handles *weakly*, only to check that stacked edits are undone
newest first. A handle that is dropped, or ``commit()``-ed, is an edit made permanent: its undo
copy is freed. Every *earlier* handle of that stack is then refused (restoring it would undo the
permanent edit too) and its undo copy is freed as well; later handles keep working.
"""
from __future__ import annotations

import contextlib
import weakref
from abc import ABC, abstractmethod
from typing import List, Optional, Sequence

from .interrupts import deferred_interrupts
from .transaction import join_transaction

__all__ = ["APPLIED", "BLOCKED", "COMMITTED", "MERGED", "RESTORED", "VOID", "EditHandle", "EditStack",
           "forget_edits", "stack_of"]

APPLIED, RESTORED, COMMITTED, MERGED, VOID, BLOCKED = "applied", "restored", "committed", "merged", "void", "blocked"


class EditStack:
    """The applied edits of one state, oldest first, held weakly."""

    def __init__(self):
        self._refs: List[weakref.ref] = []
        self._deaths = 0

    def _died(self, _ref) -> None:
        # Weakref callbacks run at arbitrary moments (inside any allocation): only count here.
        self._deaths += 1

    def push(self, handle: "EditHandle") -> None:
        self.settle()
        self._refs.append(weakref.ref(handle, self._died))

    def handles(self) -> List["EditHandle"]:
        self.settle()
        return [ref() for ref in self._refs if ref() is not None]

    def settle(self) -> None:
        """A dropped handle is a permanent edit: block every handle below the newest dropped one."""
        if not self._deaths:
            return
        self._deaths = 0
        dead = [i for i, ref in enumerate(self._refs) if ref() is None]
        if dead:
            self._cut(dead[-1], "a later edit's handle was dropped, which made that edit permanent")

    def _cut(self, index: int, reason: str) -> None:
        for ref in self._refs[:index]:
            below = ref()
            if below is not None:
                below.block(reason)
        self._refs = self._refs[index + 1:]

    def index(self, handle: "EditHandle") -> int:
        for i, ref in enumerate(self._refs):
            if ref() is handle:
                return i
        raise RuntimeError("this edit is not applied any more")

    def make_permanent(self, handle: "EditHandle") -> None:
        self.settle()
        self._cut(self.index(handle), "a later edit was committed")

    def remove(self, handle: "EditHandle") -> None:
        self.settle()
        del self._refs[self.index(handle)]

    def replace(self, old: "EditHandle", new: "EditHandle") -> None:
        self.settle()
        self._refs[self.index(old)] = weakref.ref(new, self._died)


_STACKS: "weakref.WeakKeyDictionary[object, EditStack]" = weakref.WeakKeyDictionary()


def stack_of(state) -> EditStack:
    stack = _STACKS.get(state)
    if stack is None:
        stack = _STACKS[state] = EditStack()
    return stack


class EditHandle(ABC):
    """One applied edit. ``restore()`` undoes it; ``commit()`` keeps it and frees its undo copy;
    ``with editor.edit(...):`` restores on exit. ``state`` says which happened."""

    def __init__(self, model, requests: Sequence, editor: str, info: Optional[dict] = None):
        self.model = model
        self.requests = list(requests)
        self.editor = editor
        self.info = dict(info or {})
        self.state = APPLIED
        self._why_blocked = ""
        stack_of(model).push(self)
        join_transaction(self)

    @property
    def restored(self) -> bool:
        """True once this edit is undone (or voided: its changes were replaced wholesale)."""
        return self.state in (RESTORED, VOID)

    def _require_applied(self, action: str) -> None:
        stack_of(self.model).settle()  # a dropped later handle may block this one
        if self.state == APPLIED:
            return
        reasons = {
            RESTORED: "this edit has already been restored",
            COMMITTED: "this edit was committed: it is permanent and keeps no undo copy",
            MERGED: "this edit belongs to an edit session: restore or commit the session",
            VOID: "this edit's state was replaced wholesale (e.g. a memory loaded from disk)",
            BLOCKED: f"this edit can no longer be undone: {self._why_blocked}",
        }
        raise RuntimeError(f"cannot {action}: {reasons[self.state]}")

    def _later_edits(self) -> int:
        stack = stack_of(self.model)
        stack.settle()
        return len(stack.handles()) - 1 - stack.index(self)

    def restore(self) -> None:
        """Undo this edit, bit for bit. Stacked edits must be undone newest first."""
        self._require_applied("restore")
        later = self._later_edits()
        if later:
            raise RuntimeError(f"edits are undone newest first: restore the {later} edit(s) made after this one "
                               "before it")
        with deferred_interrupts():  # never half undone: Ctrl-C is raised once the undo is complete
            self._undo()
            stack_of(self.model).remove(self)
            self._release()
            self.state = RESTORED

    def commit(self) -> None:
        """Make this edit permanent and free its undo copy. Earlier handles of the same model can
        no longer be restored (that would undo this one too); later ones still can."""
        self._require_applied("commit")
        with deferred_interrupts():
            stack_of(self.model).make_permanent(self)
            self._release()
            self.state = COMMITTED

    def block(self, reason: str) -> None:
        """Called when a later edit became permanent: this one can no longer be undone."""
        if self.state == APPLIED:
            self._release()
            self.state, self._why_blocked = BLOCKED, reason

    def void(self) -> None:
        """This edit's changes are gone (rolled back by a transaction, or replaced wholesale)."""
        if self.state == APPLIED:
            with contextlib.suppress(RuntimeError):
                stack_of(self.model).remove(self)
            self._release()
            self.state = VOID

    def undo_bytes(self) -> int:
        """Bytes of tensors this handle keeps to undo its edit."""
        return 0

    @abstractmethod
    def _undo(self) -> None:
        ...

    def _release(self) -> None:
        """Drop the undo copy (rebind, never clear: a session's merged handle may share it)."""

    def _absorb(self, later: "EditHandle") -> None:
        """Take over ``later``'s undo state (it was applied right after this one)."""
        raise TypeError(f"{type(self).__name__} edits cannot be merged into an edit session")

    def __enter__(self) -> "EditHandle":
        return self

    def __exit__(self, *exc) -> None:
        if self.state == APPLIED:
            self.restore()


def forget_edits(state) -> List[EditHandle]:
    """Void every handle applied to ``state`` (replaced wholesale, e.g. a memory loaded from disk).

    Their changes are gone, so restoring them would undo nothing of theirs; they count as restored.
    """
    stack = _STACKS.pop(state, None)
    handles = stack.handles() if stack is not None else []
    for handle in handles:
        handle._release()
        handle.state = VOID
    return handles

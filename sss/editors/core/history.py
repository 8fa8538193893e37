"""Edit history you choose: handles owned by the caller, transactions, and sessions.

* **Ownership.** The caller owns every handle. Each edited state (a model, or SERAC's memory)
  has a stack of its applied edits that holds the handles *weakly*, only to check that stacked
  edits are undone newest first. A handle that is dropped, or ``commit()``-ed, is an edit made
  permanent: its undo copy is freed. Every *earlier* handle of that stack is then refused
  (restoring it would undo the permanent edit too) and its undo copy is freed as well; later
  handles keep working.
* **Transactions.** :func:`transaction` wraps an editor's ``_apply``: whatever is raised inside
  (``KeyboardInterrupt`` included), the tensors the editor snapshotted (with
  ``weight_handle.snapshot``, which registers them here, so no second copy is made), every
  ``requires_grad`` flag, ``.grad`` and train/eval mode, and the editor's own extra state
  (``Editor.undo_point``) are put back, and handles made inside are voided.
* **Sessions.** :class:`EditSession` merges the handles of its edits into one, which keeps a
  single pre-session copy of each touched tensor however many edits stack.

Over 300 lines because the three share one private structure (the per-state stack and the
handle states) that should not be reachable from other modules.
"""
from __future__ import annotations

import contextlib
import contextvars
import copy
import weakref
from abc import ABC, abstractmethod
from typing import Callable, Iterable, List, Optional, Sequence

import torch
from torch import nn

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
        current = _TRANSACTION.get()
        if current is not None:
            current.handles.append(self)

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
        self._undo()
        stack_of(self.model).remove(self)
        self._release()
        self.state = RESTORED

    def commit(self) -> None:
        """Make this edit permanent and free its undo copy. Earlier handles of the same model can
        no longer be restored (that would undo this one too); later ones still can."""
        self._require_applied("commit")
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


# ----------------------------------------------------------------------------------------------


class Transaction:
    """What one edit may change, recorded cheaply before it runs (values only as snapshotted)."""

    def __init__(self, modules: Iterable[nn.Module], undo: Optional[Callable[[], None]]):
        seen, self.flags, self.modes = set(), [], []
        for root in modules:
            for module in root.modules():
                if id(module) not in seen:
                    seen.add(id(module))
                    self.modes.append((module, module.training))
            for param in root.parameters():
                if id(param) not in seen:
                    seen.add(id(param))
                    self.flags.append((param, param.requires_grad, param.grad))
        self.undo = undo
        self.copies: List[tuple] = []  # (tensor, its value before the edit)
        self.handles: List[EditHandle] = []

    def rollback(self) -> None:
        for handle in reversed(self.handles):
            handle.void()
        with torch.no_grad():
            for tensor, original in reversed(self.copies):
                tensor.copy_(original)
        for param, flag, grad in self.flags:
            param.requires_grad_(flag)
            param.grad = grad
        for module, mode in self.modes:
            module.training = mode  # not train(mode): that would also reset the children
        if self.undo is not None:
            self.undo()


_TRANSACTION: "contextvars.ContextVar[Optional[Transaction]]" = contextvars.ContextVar("sss_edit_transaction",
                                                                                      default=None)


def record_originals(pairs: Iterable[tuple]) -> None:
    """Register ``(tensor, copy of its value)`` pairs with the running transaction (if any)."""
    current = _TRANSACTION.get()
    if current is not None:
        current.copies.extend(pairs)


@contextlib.contextmanager
def transaction(modules: Iterable[nn.Module], undo: Optional[Callable[[], None]] = None):
    """Run an edit so that it completes or leaves ``modules`` (and ``undo``'s state) as they were."""
    tx = Transaction(modules, undo)
    parent = _TRANSACTION.get()
    token = _TRANSACTION.set(tx)
    try:
        yield tx
    except BaseException:
        tx.rollback()
        raise
    finally:
        _TRANSACTION.reset(token)
    if parent is not None:  # a nested edit that succeeded is part of the outer one
        parent.copies.extend(tx.copies)
        parent.handles.extend(tx.handles)


# ----------------------------------------------------------------------------------------------


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
        handle = self.editor.edit(requests)
        try:
            if self.handle is None:
                merged = copy.copy(handle)  # shares the undo dicts; handle._release() rebinds its own
                merged.requests, merged.info = [], {"session": True}
                stack_of(handle.model).replace(handle, merged)
                self.handle = merged
            else:
                stack = stack_of(handle.model)
                live = stack.handles()
                if len(live) < 2 or live[-2] is not self.handle or live[-1] is not handle:
                    raise RuntimeError("another edit was applied to this model after the session's last one; "
                                       "restore or commit it before editing in the session")
                self.handle._absorb(handle)
                stack.remove(handle)
        except BaseException:
            if handle.state == APPLIED and stack_of(handle.model).handles()[-1] is handle:
                handle.restore()  # anything absorbed so far equals the current values: harmless
            raise
        handle._release()
        handle.state = MERGED
        self.edits += 1
        return handle

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
        if self.handle is not None:
            getattr(self.handle, action)()
        self.state = state

    def __enter__(self) -> "EditSession":
        return self

    def __exit__(self, *exc) -> None:
        if self.state == APPLIED:
            self.restore()

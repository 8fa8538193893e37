"""Transactions: an edit completes, or leaves the model as it was.

:func:`transaction` wraps an editor's ``_apply``: whatever is raised inside (``KeyboardInterrupt``
included), the tensors the editor snapshotted (with ``weight_handle.snapshot``, which registers
them here, so no second copy is made), every ``requires_grad`` flag, ``.grad`` and train/eval
mode, and the editor's own extra state (``Editor.undo_point``) are put back, and handles made
inside are voided.
"""
from __future__ import annotations

import contextlib
import contextvars
import threading
import weakref
from typing import Callable, Iterable, List, Optional

import torch
from torch import nn

__all__ = ["Transaction", "join_transaction", "record_originals", "transaction"]


class Transaction:
    """What one edit may change, recorded cheaply before it runs (values only as snapshotted)."""

    def __init__(self, modules: Iterable[nn.Module], undo: Optional[Callable[[], None]]):
        seen, self.flags, self.modes, self.footprints = set(), [], [], []
        for root in modules:
            for module in root.modules():
                if id(module) not in seen:
                    seen.add(id(module))
                    self.modes.append((module, module.training))
                    self.footprints.append((module, _footprint(module)))
            for param in root.parameters():
                if id(param) not in seen:
                    seen.add(id(param))
                    self.flags.append((param, param.requires_grad, param.grad))
        self.undo = undo
        self.copies: List[tuple] = []  # (tensor, its value before the edit)
        self.handles: list = []  # the EditHandles made inside, voided by a rollback

    def require_finite(self, what: str) -> None:
        """Refuse (raise) an edit that left NaN or infinity in a tensor it changed."""
        for tensor, _original in self.copies:
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise ValueError(f"{what} produced non-finite values (NaN or infinity) in a {tuple(tensor.shape)} "
                                 f"{tensor.dtype} weight; the edit was undone. In float16 on a CPU the optimiser "
                                 "overflows: load the model in float32 or bfloat16")

    def put_back_flags(self) -> None:
        """``requires_grad`` and ``.grad`` as they were: an edit's result is its weights, never a
        gradient or a frozen flag left behind (a completed edit calls this too)."""
        for param, flag, grad in self.flags:
            param.requires_grad_(flag)
            param.grad = grad

    def rollback(self) -> None:
        for module, footprint in self.footprints:
            _put_back(module, footprint)
        for handle in reversed(self.handles):
            handle.void()
        with torch.no_grad():
            for tensor, original in reversed(self.copies):
                tensor.copy_(original)
        self.put_back_flags()
        for module, mode in self.modes:
            module.training = mode  # not train(mode): that would also reset the children
        if self.undo is not None:
            self.undo()


_HOOK_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_pre_hooks",
               "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks")


def _footprint(module: nn.Module) -> tuple:
    """What an edit may add to a module besides tensors: hooks, and attributes such as a patched ``forward``."""
    hooks = {name: dict(getattr(module, name)) for name in _HOOK_DICTS if hasattr(module, name)}
    return set(module.__dict__), hooks


def _put_back(module: nn.Module, footprint: tuple) -> None:
    keys, hooks = footprint
    for key in set(module.__dict__) - keys:
        del module.__dict__[key]
    for name, saved in hooks.items():
        current = getattr(module, name)
        if current != saved:
            current.clear()
            current.update(saved)


_EDIT_LOCKS: "weakref.WeakKeyDictionary[nn.Module, threading.RLock]" = weakref.WeakKeyDictionary()
_LOCKS_LOCK = threading.Lock()


@contextlib.contextmanager
def editing(model: nn.Module):
    """Hold ``model`` for one edit. Two threads editing one model would interleave their hooks and
    undo copies (random failures, a wrong restore): the second is refused at once, not queued."""
    with _LOCKS_LOCK:
        lock = _EDIT_LOCKS.setdefault(model, threading.RLock())
    if not lock.acquire(blocking=False):
        raise RuntimeError("another thread is editing this model; edit one model from one thread at a time "
                           "(or give each thread its own copy of the model)")
    try:
        yield
    finally:
        lock.release()


_TRANSACTION: "contextvars.ContextVar[Optional[Transaction]]" = contextvars.ContextVar("sss_edit_transaction",
                                                                                      default=None)


def join_transaction(handle) -> None:
    """Register a new handle with the running transaction (if any), which voids it on rollback."""
    current = _TRANSACTION.get()
    if current is not None:
        current.handles.append(handle)


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

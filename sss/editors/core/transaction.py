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
from typing import Callable, Iterable, List, Optional

import torch
from torch import nn

__all__ = ["Transaction", "join_transaction", "record_originals", "transaction"]


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
        self.handles: list = []  # the EditHandles made inside, voided by a rollback

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

"""The contract every editor keeps: ``edit(requests) -> EditHandle``, restorable bit for bit.

An editor changes its model in place. The handle it returns remembers how to undo exactly that
change; handles stack, so a second ``edit`` on an edited model is sequential editing, and edits
are undone in reverse order. Every ``edit`` is a transaction (it returns a handle or leaves the
model as it was: :mod:`.transaction`), and the caller owns the handles: see :mod:`.handles` for
ownership and commits, :mod:`.session` for sessions, :mod:`.weight_handle` for weight edits and
their files.
"""
from __future__ import annotations

import dataclasses
import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Type, Union

import torch
from torch import nn

from ...data import EditRequest, as_request_list
from ...losses import SparsityRegularizer
from ...models import num_blocks
from ...train.checkpoint import checkpoint_editor
from .config import EditorConfig
from .handles import EditHandle
from .session import EditSession
from .interrupts import deferred_interrupts
from .transaction import editing, transaction
from .registry import editor_class

__all__ = ["Editor"]

logger = logging.getLogger(__name__)


class Editor(ABC):
    """Base of every editor.

    Subclasses set ``config_class`` and implement ``_apply``; a trainable editor also defines
    ``fit(train, val)`` and checkpoints. ``model`` is the model users evaluate after ``edit``
    (for SERAC a wrapper around the untouched base model). What the command line and the study
    need to know about an editor, it declares here, as class attributes.
    """

    name = "editor"
    display_name = "editor"  # how reports name it; register_editor(name, display=...) sets both
    config_class: Type[EditorConfig] = EditorConfig
    # True for editors that are useless untrained (MEND): the command line then insists on a checkpoint.
    requires_checkpoint = False
    # Config overrides per study scale ("smoke", "cpu", "gpu"), under a study file's own overrides:
    # e.g. a few steps at the smoke scale so that a smoke study stays quick.
    study_options: Dict[str, dict] = {}
    # Bump when the same request, model and options would give other edits (a fixed bug, a new
    # default): a study cell records it, and a cell recorded under another version is stale.
    records_version = 1

    @classmethod
    def is_trainable(cls) -> bool:
        """Whether the editor is trained before it edits (has ``fit``): the study trains it per seed."""
        return callable(getattr(cls, "fit", None))

    def __init__(self, model: nn.Module, tokenizer, config: Optional[EditorConfig] = None, *,
                 regularizer: Optional[SparsityRegularizer] = None, progress: bool = True, **overrides):
        if regularizer is not None and not isinstance(regularizer, SparsityRegularizer):
            raise ValueError(f"regularizer must be a SparsityRegularizer or None, got {type(regularizer).__name__}")
        target = getattr(regularizer, "target", None)
        if isinstance(target, int) and target >= num_blocks(model):
            raise ValueError(f"the regularizer's target block {target} is out of range: the model has "
                             f"{num_blocks(model)} blocks (0 to {num_blocks(model) - 1})")
        self.base_model = model
        self.tokenizer = tokenizer
        self.regularizer = regularizer
        self.progress = progress
        config = config if config is not None else self.config_class()
        if not isinstance(config, self.config_class):
            raise ValueError(f"{type(self).__name__} takes a {self.config_class.__name__}, got {type(config).__name__}")
        names = {f.name for f in dataclasses.fields(config)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"unknown {type(self).__name__} option(s) {unknown}; options are {sorted(names)}")
        self.config = dataclasses.replace(config, **overrides)

    @property
    def model(self) -> nn.Module:
        return self.base_model

    @property
    def device(self) -> torch.device:
        return next(self.base_model.parameters()).device

    def edit(self, requests: Union[EditRequest, Iterable[EditRequest]]) -> EditHandle:
        """Apply ``requests`` as one edit, in place; return the handle that undoes it.

        A transaction: if anything is raised inside (``KeyboardInterrupt`` included), every
        tensor the editor snapshotted, every ``requires_grad`` flag, ``.grad`` and train/eval
        mode of :meth:`edited_modules`, their hooks and patched attributes, and the state
        :meth:`undo_point` saves are put back. Ctrl-C is held back to safe points
        (:mod:`.interrupts`), and an edit that leaves a non-finite value in a tensor it changed
        is refused (and undone).
        """
        requests = as_request_list(requests)
        return self._transact(lambda: self._apply(requests))

    def _transact(self, apply: Callable[[], EditHandle]) -> EditHandle:
        """Run ``apply`` as one edit: all of it, or none of it, whatever is raised or interrupted."""
        with deferred_interrupts() as interrupts, editing(self.base_model):
            with transaction(self.edited_modules(), self.undo_point()) as tx:
                handle = apply()
                tx.require_finite(f"{type(self).__name__}'s edit")
                tx.put_back_flags()
                interrupts.check()  # held back until here: the transaction undoes the edit
            interrupts.undo_on_exit(handle.restore)  # arriving later, it undoes the edit before it is raised
            return handle  # inside: no line of the edit runs once the interrupt handler is back

    def session(self) -> EditSession:
        """Sequential editing that keeps one undo copy of each touched tensor (see :class:`EditSession`)."""
        return EditSession(self)

    def edited_modules(self) -> List[nn.Module]:
        """The modules whose flags and modes an edit's transaction keeps (tensor values: as snapshotted)."""
        modules = [self.base_model]
        if isinstance(self.model, nn.Module) and self.model is not self.base_model:
            modules.append(self.model)
        return modules

    def undo_point(self) -> Optional[Callable[[], None]]:
        """State an edit changes besides snapshotted weights: a function that puts it back, or None."""
        return None

    @abstractmethod
    def _apply(self, requests: List[EditRequest]) -> EditHandle:
        ...

    @classmethod
    def from_checkpoint(cls, path: Union[str, Path], model: nn.Module, tokenizer, **overrides) -> "Editor":
        """A trained editor for ``model`` from the checkpoint folder ``path`` (or a training run's folder).

        On :class:`Editor` itself this reads which editor the checkpoint records and hands over
        to that class. Trainable editors override it; ``overrides`` are constructor arguments
        that win over the checkpoint's (``progress=``, config fields that leave the weights as
        they are, e.g. SERAC's ``threshold``).
        """
        if cls is Editor:
            return editor_class(checkpoint_editor(path)).from_checkpoint(path, model, tokenizer, **overrides)
        raise ValueError(f"editor {cls.name!r} ({cls.__name__}) has no checkpoints to load; build it as "
                         f"{cls.__name__}(model, tokenizer, ...)")

    @classmethod
    def load(cls, path: Union[str, Path], model: nn.Module, tokenizer, **overrides) -> "Editor":
        """The same as :meth:`from_checkpoint`."""
        return cls.from_checkpoint(path, model, tokenizer, **overrides)

    def describe(self) -> dict:
        """Everything a report needs to reproduce this editor (and ``display``, its name in tables)."""
        return {
            "editor": self.name,
            "display": self.display_name,
            "config": self.config.to_dict(),
            "regularizer": None if self.regularizer is None else self.regularizer.describe(),
        }

"""The contract every editor keeps: ``edit(requests) -> EditHandle``, restorable bit for bit.

An editor changes its model in place. The handle it returns remembers how to undo exactly that
change; handles stack, so a second ``edit`` on an edited model is sequential editing, and edits
are undone in reverse order. Weight edits keep the original tensors (not a delta to subtract,
which would not round-trip in floating point) so ``restore()`` is exact.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import weakref
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Type, Union

import torch
from torch import nn

from ..data import EditRequest, as_request_list
from ..losses import SparsityRegularizer
from ..train.checkpoint import checkpoint_editor, refuse_mismatches, shape_mismatches, shapes

logger = logging.getLogger(__name__)

# The handles currently applied to each model (or other edited state, e.g. SERAC's memory),
# oldest first. Keyed weakly so a model that is dropped does not stay alive through its history.
_ACTIVE_EDITS: "weakref.WeakKeyDictionary[nn.Module, List[EditHandle]]" = weakref.WeakKeyDictionary()


class EditHandle(ABC):
    """One applied edit. ``restore()`` undoes it; ``with editor.edit(...):`` restores on exit."""

    def __init__(self, model: nn.Module, requests: Sequence[EditRequest], editor: str, info: Optional[dict] = None):
        self.model = model
        self.requests = list(requests)
        self.editor = editor
        self.info = dict(info or {})
        self.restored = False
        _ACTIVE_EDITS.setdefault(model, []).append(self)

    def restore(self) -> None:
        """Undo this edit. Stacked edits must be undone newest first."""
        if self.restored:
            raise RuntimeError("this edit has already been restored")
        stack = _ACTIVE_EDITS.get(self.model, [])
        if stack and stack[-1] is not self:
            raise RuntimeError(f"edits are undone newest first: restore the {len(stack) - stack.index(self) - 1} "
                               "edit(s) made after this one before it")
        self._undo()
        stack.pop()
        self.restored = True

    @abstractmethod
    def _undo(self) -> None:
        ...

    def __enter__(self) -> "EditHandle":
        return self

    def __exit__(self, *exc) -> None:
        if not self.restored:
            self.restore()


def forget_edits(state) -> List[EditHandle]:
    """Void every handle applied to ``state`` (replaced wholesale, e.g. a memory loaded from disk).

    Their changes are gone, so restoring them would undo nothing of theirs; they count as restored.
    """
    handles = _ACTIVE_EDITS.pop(state, [])
    for handle in handles:
        handle.restored = True
    return handles


class WeightEditHandle(EditHandle):
    """An edit that changed some parameters in place; keeps their original values."""

    def __init__(self, model: nn.Module, originals: Dict[str, torch.Tensor], requests, editor: str,
                 info: Optional[dict] = None):
        super().__init__(model, requests, editor, info)
        self.originals = originals
        params = dict(model.named_parameters())
        # The delta is fixed at edit time, so saving it later (after further edits) still
        # describes this edit alone.
        self._delta = {name: (params[name].detach() - original).clone() for name, original in originals.items()}

    @property
    def delta(self) -> Dict[str, torch.Tensor]:
        """Edited minus original value of every tensor this edit touched."""
        return dict(self._delta)

    def _undo(self) -> None:
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, original in self.originals.items():
                params[name].copy_(original)

    def save(self, path: Union[str, Path]) -> Path:
        """Write the weight delta as ``<path>.safetensors`` plus ``<path>.json`` metadata."""
        from safetensors.torch import save_file

        base = Path(path).with_suffix("")
        base.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous().cpu() for k, v in self._delta.items()}, str(base) + ".safetensors")
        meta = {
            "editor": self.editor,
            "model_type": getattr(self.model.config, "model_type", None),
            "shapes": {k: list(v.shape) for k, v in self._delta.items()},
            "requests": [r.to_dict() for r in self.requests],
            "info": _jsonable(self.info),
        }
        Path(str(base) + ".json").write_text(json.dumps(meta, indent=2))
        return Path(str(base) + ".safetensors")

    @classmethod
    def load(cls, path: Union[str, Path], model: nn.Module) -> "WeightEditHandle":
        """Apply a saved delta to ``model`` (in place) and return a handle that undoes it.

        The file is refused, with what differs, when it names a parameter the model lacks or one
        of another shape.
        """
        from safetensors.torch import load_file

        base = Path(path).with_suffix("")
        delta = load_file(str(base) + ".safetensors")
        meta_path = Path(str(base) + ".json")
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        params = dict(model.named_parameters())
        refuse_mismatches(shape_mismatches(shapes(delta), shapes(params), saved_as="saved edit", complete=False),
                          "the saved edit does not match this model")
        originals = {name: params[name].detach().clone() for name in delta}
        with torch.no_grad():
            for name, tensor in delta.items():
                params[name].add_(tensor.to(params[name].device, params[name].dtype))
        requests = [EditRequest.from_dict(r) for r in meta.get("requests", [])]
        return cls(model, originals, requests, meta.get("editor", "loaded"), meta.get("info"))


def _jsonable(value):
    try:
        json.dumps(value)
        return value
    except TypeError:
        return repr(value)


# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class EditorConfig:
    """Base of every editor's hyper-parameters; subclasses add fields with the paper's defaults."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class OuterLossConfig(EditorConfig):
    """The weights of ``L_ori = c_e * L_e + c_loc * L_loc`` (Eq. 4-6), shared by the trained editors."""

    c_e: float = 0.1
    c_loc: float = 1.0

    def __post_init__(self):
        for name in ("c_e", "c_loc"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{type(self).__name__}.{name} must be >= 0, got {getattr(self, name)!r}")


EDITORS: Dict[str, Type["Editor"]] = {}


def register_editor(name: str, display: Optional[str] = None):
    """Class decorator: make an editor reachable by name (``sss eval --editor NAME``, checkpoints).

    ``display`` is how reports and tables name it (default: ``name``), e.g. ``"FT-L"``.
    """

    def decorate(cls):
        cls.name = name
        cls.display_name = display or name
        EDITORS[name] = cls
        return cls

    return decorate


def editor_class(name: str) -> Type["Editor"]:
    if name not in EDITORS:
        raise ValueError(f"unknown editor {name!r}; known editors: {', '.join(sorted(EDITORS))}")
    return EDITORS[name]


class Editor(ABC):
    """Base of FT-L, MEND and SERAC.

    Subclasses set ``config_class`` and implement ``_apply``. ``model`` is the model users
    evaluate after ``edit`` (for SERAC a wrapper around the untouched base model).
    """

    name = "editor"
    display_name = "editor"  # how reports name it; register_editor(name, display=...) sets both
    config_class: Type[EditorConfig] = EditorConfig
    # True for editors that are useless untrained (MEND): the command line then insists on a checkpoint.
    requires_checkpoint = False

    def __init__(self, model: nn.Module, tokenizer, config: Optional[EditorConfig] = None, *,
                 regularizer: Optional[SparsityRegularizer] = None, progress: bool = True, **overrides):
        if regularizer is not None and not isinstance(regularizer, SparsityRegularizer):
            raise ValueError(f"regularizer must be a SparsityRegularizer or None, got {type(regularizer).__name__}")
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
        """Apply ``requests`` as one edit, in place; return the handle that undoes it."""
        return self._apply(as_request_list(requests))

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


def snapshot(model: nn.Module, names: Iterable[str]) -> Dict[str, torch.Tensor]:
    """Exact copies of the named parameters (the originals a WeightEditHandle restores)."""
    params = dict(model.named_parameters())
    return {name: params[name].detach().clone() for name in names}

"""Weight edits: the handle that undoes one (from the original values) and its files.

A handle keeps only the original value of each tensor its edit touched (not a delta to
subtract, which would not round-trip in floating point), so ``restore()`` is exact. Saving
writes the *edited values* themselves, so loading reproduces the edit bit for bit:

* ``<path>.safetensors``: the edited value of every touched tensor, in its own dtype;
* ``<path>.json``, written last: the editor, the requests, the SHA-256 and size of the
  safetensors file, and a fingerprint of each base tensor the edit was made on.

Both are written atomically. Loading refuses (naming the file and what differs) a damaged
file, another architecture, and a model of the same shapes with other weights.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, Iterable, Optional, Union

import torch
from torch import nn

from ...data import EditRequest
from ...files import check_fingerprint, read_json, save_safetensors_atomic, sha256_file, weights_fingerprint, \
    write_json_atomic
from ...train.checkpoint import refuse_mismatches, shape_mismatches, shapes
from .handles import EditHandle
from .transaction import record_originals

FORMAT = "sss-edit/2"


def snapshot(model: nn.Module, names: Iterable[str]) -> Dict[str, torch.Tensor]:
    """Exact copies of the named parameters (the originals a WeightEditHandle restores).

    Inside ``Editor.edit`` the copies are also what the edit's transaction rolls back to, so an
    editor declares what it may change by snapshotting it before changing it.
    """
    params = dict(model.named_parameters())
    copies = {name: params[name].detach().clone() for name in names}
    record_originals((params[name], copy) for name, copy in copies.items())
    return copies


def edit_paths(path: Union[str, Path]):
    """``(tensors, metadata)`` file paths of a saved edit. ``"edit_c0.9"`` gives
    ``edit_c0.9.safetensors`` (a dot in the name is not a suffix); a given ``.safetensors``
    or ``.json`` suffix is dropped first."""
    if not isinstance(path, (str, os.PathLike)) or not str(path).strip() or Path(path).name in ("", ".", ".."):
        raise ValueError(f"a saved edit needs a file name (e.g. 'edits/capital'), got {path!r}")
    path = Path(path)
    if path.suffix in (".safetensors", ".json"):
        path = path.with_suffix("")
    return Path(f"{path}.safetensors"), Path(f"{path}.json")


class WeightEditHandle(EditHandle):
    """An edit that changed some parameters in place; keeps their original values."""

    def __init__(self, model: nn.Module, originals: Dict[str, torch.Tensor], requests, editor: str,
                 info: Optional[dict] = None):
        super().__init__(model, requests, editor, info)
        self.originals = originals

    def _undo(self) -> None:
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, original in self.originals.items():
                params[name].copy_(original)

    def _release(self) -> None:
        self.originals = {}

    def _absorb(self, later: "WeightEditHandle") -> None:
        for name, original in later.originals.items():
            self.originals.setdefault(name, original)  # the first touch holds the pre-session value

    def undo_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.originals.values())

    def _current(self, action: str) -> Dict[str, torch.Tensor]:
        """The touched tensors as this edit left them (it must be the newest applied edit)."""
        self._require_applied(action)
        if self._later_edits():
            raise RuntimeError(f"cannot {action}: later edits changed the model since; {action} an edit "
                               "before making the next one")
        params = dict(self.model.named_parameters())
        return {name: params[name].detach() for name in self.originals}

    @property
    def edited(self) -> Dict[str, torch.Tensor]:
        """Edited value of every tensor this edit touched (views of the live parameters)."""
        return self._current("read the edited values")

    @property
    def delta(self) -> Dict[str, torch.Tensor]:
        """Edited minus original value of every touched tensor (for inspection; files keep values)."""
        return {name: value - self.originals[name] for name, value in self._current("compute the delta").items()}

    def save(self, path: Union[str, Path]) -> Path:
        """Write the edit as ``<path>.safetensors`` + ``<path>.json``; returns the safetensors path.

        Save before the next edit or a commit: the file holds the values this edit left.
        """
        edited = self._current("save")
        tensors_path, meta_path = edit_paths(path)
        save_safetensors_atomic(edited, tensors_path, metadata={"format": FORMAT})
        meta = {
            "format": FORMAT,
            "editor": self.editor,
            "model_type": getattr(getattr(self.model, "config", None), "model_type", None),
            "file": tensors_path.name,
            "size": tensors_path.stat().st_size,
            "sha256": sha256_file(tensors_path),
            "base_fingerprint": weights_fingerprint(self.originals, list(self.originals)),
            "base_fingerprints": {name: weights_fingerprint(self.originals, [name]) for name in self.originals},
            "requests": [r.to_dict() for r in self.requests],
            "info": _jsonable(self.info),
        }
        write_json_atomic(meta_path, meta)
        return tensors_path

    @classmethod
    def load(cls, path: Union[str, Path], model: nn.Module) -> "WeightEditHandle":
        """Apply a saved edit to ``model`` (in place, bit for bit) and return a handle that undoes it.

        Refused, naming the file and what differs, when either file is missing or damaged, or
        when the model's tensors differ from those the edit was made on (names, shapes, dtypes,
        or values: a same-shape model with other weights).
        """
        tensors_path, meta_path = edit_paths(path)
        if not meta_path.is_file():
            raise ValueError(f"{meta_path} is missing: a saved edit is {tensors_path.name} plus {meta_path.name} "
                             "(written last, so the save did not finish)")
        meta = read_json(meta_path)
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError(f"{meta_path} is not a saved edit of format {FORMAT} (it says "
                             f"{meta.get('format') if isinstance(meta, dict) else type(meta).__name__!r}); "
                             "save the edit again with this version of sss")
        if not isinstance(meta.get("base_fingerprint"), str):  # without it, any weights would be overwritten
            raise ValueError(f"{meta_path} records no base_fingerprint, so the weights it applies to cannot be "
                             "checked; save the edit again with this version of sss")
        edited = _read_verified(tensors_path, meta_path, meta)
        params = dict(model.named_parameters())
        refuse_mismatches(shape_mismatches(shapes(edited), shapes(params), saved_as="saved edit", complete=False),
                          f"the saved edit {tensors_path} does not match this model")
        dtypes = [f"{n}: saved {t.dtype}, model {params[n].dtype}" for n, t in edited.items()
                  if t.dtype != params[n].dtype]
        refuse_mismatches(dtypes, f"the saved edit {tensors_path} does not match this model's dtypes")
        expected = meta.get("base_fingerprints") or {}
        differing = [n for n in sorted(edited) if expected.get(n) != weights_fingerprint(params, [n])]
        check_fingerprint(meta.get("base_fingerprint"), weights_fingerprint(params, list(edited)),
                          f"the saved edit {tensors_path} (differing tensors: {', '.join(differing) or 'none'})")
        originals = snapshot(model, edited)
        try:
            with torch.no_grad():
                for name, value in edited.items():
                    params[name].copy_(value.to(params[name].device))
            requests = [EditRequest.from_dict(r) for r in meta.get("requests", [])]
            return cls(model, originals, requests, meta.get("editor", "loaded"), meta.get("info"))
        except BaseException:
            with torch.no_grad():
                for name, original in originals.items():
                    params[name].copy_(original)
            raise


def _read_verified(tensors_path: Path, meta_path: Path, meta: dict) -> Dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not tensors_path.is_file():
        raise ValueError(f"{tensors_path} is missing ({meta_path} describes it)")
    size = tensors_path.stat().st_size
    if size != meta.get("size"):
        raise ValueError(f"{tensors_path} has {size} bytes, {meta_path} says {meta.get('size')}: the file is "
                         "truncated or was replaced")
    digest = sha256_file(tensors_path)
    if digest != meta.get("sha256"):
        raise ValueError(f"{tensors_path} has SHA-256 {digest[:16]}..., {meta_path} says "
                         f"{str(meta.get('sha256'))[:16]}...: the file is damaged")
    try:
        return load_file(str(tensors_path))
    except Exception as error:  # safetensors raises its own error types
        raise ValueError(f"{tensors_path} is not a readable safetensors file: {error}") from error


def _jsonable(value):
    try:
        json.dumps(value)
        return value
    except TypeError:
        return repr(value)


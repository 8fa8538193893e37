"""Checkpoint folders: safetensors for tensors, JSON for everything else, a manifest; no pickle.

A folder is staged beside its destination (every file written atomically by :mod:`sss.files`,
``manifest.json`` with each file's size and SHA-256 last) and renamed into place, so a reader
(or a run killed mid-write) never sees half a checkpoint. Reading verifies the manifest first:
a missing, truncated or altered file is a ``ValueError`` naming it and what differs, never a
raw ``SafetensorError`` or a silently wrong tensor.

Also the two things every reader of a checkpoint needs: which folder a user meant (a training
run's folder stands for its ``best/``) and a report of how saved tensors differ from the ones
they are loaded into.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from ..files import MANIFEST, read_json, save_safetensors_atomic, verify_manifest, write_manifest, write_text_atomic

LOG_FILE = "train_log.jsonl"
WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "config.json"


def write_checkpoint(path: Union[str, Path], tensors: Dict[str, torch.Tensor], config: dict,
                     extra_files: Optional[Dict[str, Union[dict, Dict[str, torch.Tensor]]]] = None,
                     manifest_extra: Optional[dict] = None) -> Path:
    """Write ``weights.safetensors`` + ``config.json`` (and any ``extra_files``) into folder ``path``.

    ``extra_files`` maps file names to a dict of tensors (``.safetensors``) or a
    JSON-serialisable dict (``.json``). ``manifest_extra`` (JSON) is stored in the manifest
    (e.g. a fingerprint of the base weights).
    """
    path = Path(path)
    files = {WEIGHTS_FILE: tensors, CONFIG_FILE: config, **(extra_files or {})}
    for name in files:
        if not name.endswith((".safetensors", ".json")) or name == MANIFEST:
            raise ValueError(f"checkpoint file {name!r} must end in .safetensors or .json (and not be {MANIFEST})")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(path.name + ".writing")
    _remove(staging)
    staging.mkdir()
    for name, content in files.items():
        if name.endswith(".safetensors"):
            save_safetensors_atomic(content, staging / name)
        else:
            write_text_atomic(staging / name, json.dumps(content, indent=2, default=json_default) + "\n")
    write_manifest(staging, sorted(files), manifest_extra)  # last: a folder without it is unfinished
    old = path.with_name(path.name + ".old")
    _remove(old)
    if path.exists() or path.is_symlink():
        os.rename(path, old)
    os.rename(staging, path)
    _remove(old)
    return path


def _remove(path: Path) -> None:
    """Remove a folder, or only the link where it is a symbolic link (a good copy put back by hand
    as a link to it is the user's: it is never deleted)."""
    if path.is_symlink():
        path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


def verify_checkpoint(path: Union[str, Path], recover: Optional[str] = None) -> Path:
    """The checkpoint folder ``path`` names (its ``.old`` twin after an interrupted swap), verified.

    Every file its manifest lists must be present with the recorded size and SHA-256; otherwise
    a ``ValueError`` names the file and what differs, followed by ``recover`` (how to get a good
    copy). Reads no tensor.
    """
    requested = Path(path)
    path = existing_checkpoint(requested)
    if not path.is_dir():
        raise ValueError(f"checkpoint folder {requested} does not exist" if not path.exists()
                         else f"checkpoint {requested} is a file, not a folder")
    if not (path / MANIFEST).is_file():
        for name in (WEIGHTS_FILE, CONFIG_FILE):
            if not (path / name).is_file():
                raise ValueError(f"{path} is not an sss checkpoint: it has no {name}")
    try:
        verify_manifest(path, recover)
    except ValueError as error:
        if recover and recover not in str(error):  # a malformed manifest is reported without the hint
            raise ValueError(f"{error}. {recover}") from error
        raise
    return path


def read_checkpoint(path: Union[str, Path], recover: Optional[str] = None) -> Tuple[Dict[str, torch.Tensor], dict]:
    """``(tensors, config)`` of a folder written by :func:`write_checkpoint`, verified first."""
    path = verify_checkpoint(path, recover)
    config = read_json(path / CONFIG_FILE)
    if not isinstance(config, dict):
        raise ValueError(f"{path / CONFIG_FILE} holds a {type(config).__name__}, not a JSON object")
    return load_tensors(path / WEIGHTS_FILE), config


def load_tensors(path: Union[str, Path]) -> Dict[str, torch.Tensor]:
    """``safetensors.torch.load_file``, with a damaged or missing file a ``ValueError`` naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} does not exist")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, RuntimeError) as error:
        raise ValueError(f"{path} is not a readable safetensors file ({error}): it is damaged or was not "
                         "written by safetensors") from error


def existing_checkpoint(path: Path) -> Path:
    """``path``, or the ``.old`` folder a run killed between the two renames of write_checkpoint leaves."""
    old = path.with_name(path.name + ".old")
    if not path.exists() and old.exists():
        return old
    return path


def json_default(value):
    """``json.dumps``'s ``default`` for what configs hold besides JSON: tuples, sets, paths, dtypes."""
    if isinstance(value, (set, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.dtype):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def optimizer_files(optimizer: torch.optim.Optimizer) -> Dict[str, dict]:
    """Adam's state as safetensors (tensors) + JSON (hyper-parameters, non-tensor values)."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value
            else:
                scalars[f"{index}.{key}"] = value
    return {"optimizer.safetensors": tensors,
            "optimizer.json": {"param_groups": state["param_groups"], "scalars": scalars}}


def load_optimizer(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    tensors = load_tensors(folder / "optimizer.safetensors")
    meta = read_json(folder / "optimizer.json")
    state: Dict[int, dict] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def config_differences(saved: dict, current: dict, prefix: str = "") -> List[str]:
    """One line per key (dotted, nested dicts walked) whose JSON differs between ``saved`` and ``current``."""
    keys = sorted(set(saved) | set(current))
    out = []
    for key in keys:
        a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, f"{prefix}{key}.")
        elif json.dumps(a, default=json_default) != json.dumps(b, default=json_default):
            out.append(f"{prefix}{key}: checkpoint {a!r}, now {b!r}")
    return out


def resolve_checkpoint(path: Union[str, Path]) -> Path:
    """The checkpoint folder ``path`` names: itself, or a training run's ``best/`` when ``path`` is a run."""
    path = Path(path)

    def looks_like_checkpoint(folder: Path) -> bool:  # even a damaged one, so that its damage is reported
        return any((folder / name).exists() for name in (WEIGHTS_FILE, CONFIG_FILE, MANIFEST))

    if not looks_like_checkpoint(existing_checkpoint(path)) and existing_checkpoint(path / "best").is_dir():
        return path / "best"
    return path


TRAINABLE_KEY = "trainable"


def write_editor_checkpoint(path: Union[str, Path], tensors: Dict[str, torch.Tensor], editor_config: dict) -> Path:
    """An editor's ``save``: its ``checkpoint_config()`` nested under ``"trainable"``, as the training loop writes it."""
    return write_checkpoint(path, tensors, {TRAINABLE_KEY: editor_config})


def editor_section(saved: dict) -> dict:
    """The editor's part of a checkpoint's config: under ``"trainable"`` (every checkpoint written
    now), or the whole config (``MEND.save`` of sss 0.1.0 wrote it at the top)."""
    return saved.get(TRAINABLE_KEY, saved)


def read_editor_checkpoint(path: Union[str, Path]) -> Tuple[Dict[str, torch.Tensor], dict, Path]:
    """``(tensors, editor config, folder)`` of an editor's checkpoint: a ``save`` folder or a training run.

    Either way the editor config names the editor (``"editor"``).
    """
    folder = resolve_checkpoint(path)
    tensors, saved = read_checkpoint(folder)
    return tensors, editor_section(saved), folder


def checkpoint_editor(path: Union[str, Path]) -> str:
    """The registered name of the editor a checkpoint holds (reads only its JSON)."""
    folder = existing_checkpoint(resolve_checkpoint(path))
    config_path = folder / CONFIG_FILE
    if not Path(path).exists():
        raise ValueError(f"checkpoint folder {path} does not exist")
    if not config_path.is_file():
        raise ValueError(f"{path} is not an sss checkpoint: it has no {CONFIG_FILE} (nor best/{CONFIG_FILE})")
    saved = read_json(config_path)
    inner = editor_section(saved) if isinstance(saved, dict) else None
    name = inner.get("editor") if isinstance(inner, dict) else None
    if not isinstance(name, str):
        raise ValueError(f"{config_path} does not say which editor it holds (no 'editor' key)")
    return name


def shape_mismatches(saved: Mapping[str, Sequence[int]], present: Mapping[str, Sequence[int]], *,
                     saved_as: str = "checkpoint", present_as: str = "model", complete: bool = True) -> List[str]:
    """One line per tensor name where ``saved`` (name -> shape) does not fit ``present``.

    ``complete``: every name of ``present`` must be saved too (a whole state dict); False for a
    partial set such as an edit's delta.
    """
    problems = [f"{name}: not a parameter of this {present_as}" for name in saved if name not in present]
    if complete:
        problems += [f"{name}: missing from the {saved_as}" for name in present if name not in saved]
    problems += [f"{name}: {saved_as} shape {tuple(saved[name])}, {present_as} {tuple(present[name])}"
                 for name in present if name in saved and tuple(saved[name]) != tuple(present[name])]
    return problems


def refuse_mismatches(problems: Sequence[str], heading: str, most: int = 20) -> None:
    """Raise ``ValueError(heading: the first ``most`` problems)`` unless ``problems`` is empty."""
    if problems:
        more = f"\n  ... and {len(problems) - most} more" if len(problems) > most else ""
        raise ValueError(f"{heading}:\n  " + "\n  ".join(problems[:most]) + more)


def shapes(tensors: Mapping[str, torch.Tensor]) -> Dict[str, Tuple[int, ...]]:
    return {name: tuple(tensor.shape) for name, tensor in tensors.items()}

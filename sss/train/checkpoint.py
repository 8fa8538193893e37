"""Checkpoint folders: safetensors for tensors, JSON for everything else, written atomically; no pickle.

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

LOG_FILE = "train_log.jsonl"
WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "config.json"


def write_checkpoint(path: Union[str, Path], tensors: Dict[str, torch.Tensor], config: dict,
                     extra_files: Optional[Dict[str, Union[dict, Dict[str, torch.Tensor]]]] = None) -> Path:
    """Write ``weights.safetensors`` + ``config.json`` (and any ``extra_files``) into folder ``path``.

    The folder is written beside its destination and renamed into place, so a reader (or a run
    killed mid-write) never sees half a checkpoint. ``extra_files`` maps file names to a dict of
    tensors (``.safetensors``) or a JSON-serialisable dict (``.json``).
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(path.name + ".writing")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    save_file(_cpu_contiguous(tensors), str(staging / WEIGHTS_FILE))
    (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2, default=json_default))
    for name, content in (extra_files or {}).items():
        if name.endswith(".safetensors"):
            save_file(_cpu_contiguous(content), str(staging / name))
        elif name.endswith(".json"):
            (staging / name).write_text(json.dumps(content, indent=2, default=json_default))
        else:
            raise ValueError(f"extra checkpoint file {name!r} must end in .safetensors or .json")
    old = path.with_name(path.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.rename(path, old)
    os.rename(staging, path)
    shutil.rmtree(old, ignore_errors=True)
    return path


def read_checkpoint(path: Union[str, Path]) -> Tuple[Dict[str, torch.Tensor], dict]:
    """``(tensors, config)`` of a folder written by :func:`write_checkpoint`."""
    from safetensors.torch import load_file

    path = existing_checkpoint(Path(path))
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        if not (path / name).is_file():
            raise ValueError(f"{path} is not an sss checkpoint: it has no {name}")
    return load_file(str(path / WEIGHTS_FILE)), json.loads((path / CONFIG_FILE).read_text())


def existing_checkpoint(path: Path) -> Path:
    """``path``, or the ``.old`` folder a run killed between the two renames of write_checkpoint leaves."""
    # A run killed between the two renames of write_checkpoint leaves only the ".old" folder.
    old = path.with_name(path.name + ".old")
    if not path.exists() and old.exists():
        return old
    return path


def _cpu_contiguous(tensors: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


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
    from safetensors.torch import load_file

    tensors = load_file(str(folder / "optimizer.safetensors"))
    meta = json.loads((folder / "optimizer.json").read_text())
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
    if not (existing_checkpoint(path) / WEIGHTS_FILE).exists() and \
            (existing_checkpoint(path / "best") / WEIGHTS_FILE).exists():
        return path / "best"
    return path


def read_editor_checkpoint(path: Union[str, Path]) -> Tuple[Dict[str, torch.Tensor], dict, Path]:
    """``(tensors, editor config, folder)`` of an editor's checkpoint: a ``save`` folder or a training run.

    The training loop nests the editor's ``checkpoint_config()`` under ``"trainable"``; a ``save``
    folder may hold it at the top. Either way it names the editor (``"editor"``).
    """
    folder = resolve_checkpoint(path)
    tensors, saved = read_checkpoint(folder)
    return tensors, saved.get("trainable", saved), folder


def checkpoint_editor(path: Union[str, Path]) -> str:
    """The registered name of the editor a checkpoint holds (reads only its JSON)."""
    folder = existing_checkpoint(resolve_checkpoint(path))
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise ValueError(f"{path} is not an sss checkpoint: it has no {CONFIG_FILE} (nor best/{CONFIG_FILE})")
    saved = json.loads(config_path.read_text())
    name = saved.get("trainable", saved).get("editor")
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

"""Checkpoint folders: safetensors for tensors, JSON for everything else, written atomically; no pickle."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

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
    (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2, default=_json_default))
    for name, content in (extra_files or {}).items():
        if name.endswith(".safetensors"):
            save_file(_cpu_contiguous(content), str(staging / name))
        elif name.endswith(".json"):
            (staging / name).write_text(json.dumps(content, indent=2, default=_json_default))
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

    path = _existing_checkpoint(Path(path))
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        if not (path / name).is_file():
            raise ValueError(f"{path} is not an sss checkpoint: it has no {name}")
    return load_file(str(path / WEIGHTS_FILE)), json.loads((path / CONFIG_FILE).read_text())


def _existing_checkpoint(path: Path) -> Path:
    # A run killed between the two renames of write_checkpoint leaves only the ".old" folder.
    old = path.with_name(path.name + ".old")
    if not path.exists() and old.exists():
        return old
    return path


def _cpu_contiguous(tensors: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


def _json_default(value):
    if isinstance(value, (set, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.dtype):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _optimizer_files(optimizer: torch.optim.Optimizer) -> Dict[str, dict]:
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


def _load_optimizer(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    from safetensors.torch import load_file

    tensors = load_file(str(folder / "optimizer.safetensors"))
    meta = json.loads((folder / "optimizer.json").read_text())
    state: Dict[int, dict] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


# ----------------------------------------------------------------------------------------------

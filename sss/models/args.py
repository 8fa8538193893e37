"""The checked arguments of ``load_model``: a floating dtype and a device this machine has.

Its own module, importing torch only, so that the command line checks ``--device`` with the same
rules as the library (one home), before anything is loaded. Re-exported by ``sss.models``.
"""
from __future__ import annotations

import os
from typing import Dict, Optional

import torch

DTYPES: Dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float64": torch.float64, "fp64": torch.float64, "double": torch.float64,
}


def as_dtype(dtype) -> torch.dtype:
    """A floating ``torch.dtype`` from itself or a name ("float16", "bf16", "torch.float32"...)."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point type, got {dtype}")
        return dtype
    if isinstance(dtype, str):
        key = dtype.strip().lower().removeprefix("torch.")
        if key in DTYPES:
            return DTYPES[key]
    raise ValueError(f"unknown dtype {dtype!r}; use a floating torch.dtype or one of {', '.join(DTYPES)}")


def as_device(device, what: str = "device") -> Optional[torch.device]:
    """A ``torch.device`` that exists here, checked before any model is loaded.

    ``what`` names the argument in the messages (the command line passes ``"--device"``).
    """
    if device is None:
        return None
    if not isinstance(device, (str, torch.device)) or isinstance(device, bool):
        raise ValueError(f"{what} must be a string such as 'cpu' or 'cuda:0' (or a torch.device), got {device!r}")
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError) as error:
        raise ValueError(f"malformed {what} {device!r} (use e.g. 'cpu', 'cuda', 'cuda:1', 'mps'): {error}") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{what} {device!r}: CUDA is not available on this machine")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"{what} {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif parsed.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"{what} {device!r}: MPS is not available on this machine")
    elif parsed.type == "meta":  # shapes without values: no edit or measurement can run there
        raise ValueError(f"{what} {device!r}: the meta device holds no values; use 'cpu' or 'cuda'")
    elif parsed.type not in ("cpu", "cuda", "mps") and not hasattr(torch, parsed.type):
        raise ValueError(f"{what} {device!r}: sss does not know the device type {parsed.type!r}")
    return parsed


def check_load_arguments(name_or_path, seed) -> None:
    """``load_model``'s name and seed: a non-empty name or path, an integer seed (not a bool)."""
    if not isinstance(name_or_path, (str, os.PathLike)) or not str(name_or_path).strip():
        raise ValueError(f"load_model needs a model name or path, got {name_or_path!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")

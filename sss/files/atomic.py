"""Atomic whole-file writes.

Every write goes to a temporary file beside its target, is flushed and fsynced, and then
``os.replace``-d over the target (and the folder fsynced so the rename itself survives a power
cut). A reader therefore sees the old file or the new one, never half of one; whatever is raised
during the write (``KeyboardInterrupt`` included) removes the temporary file.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

import torch

__all__ = ["PathLike", "save_safetensors_atomic", "write_bytes_atomic", "write_json_atomic", "write_text_atomic"]

PathLike = Union[str, os.PathLike]


def _fsync_folder(folder: Path) -> None:
    # Makes the rename durable; some platforms (Windows) cannot open a folder, which is fine.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_atomic(path: PathLike, write: Callable[[Path], None]) -> Path:
    """Let ``write(temporary_path)`` produce the file, then move it over ``path`` in one step."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    temporary = Path(name)
    try:
        write(temporary)
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        # mkstemp makes the file private (0600); give it the target's mode, or a plain file's.
        mode = target.stat().st_mode & 0o777 if target.exists() else 0o644
        os.chmod(temporary, mode)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    _fsync_folder(target.parent)
    return target


def write_bytes_atomic(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (old content or new, never half)."""
    return _write_atomic(path, lambda temporary: temporary.write_bytes(data))


def write_text_atomic(path: PathLike, text: str, encoding: str = "utf-8") -> Path:
    return write_bytes_atomic(path, text.encode(encoding))


def write_json_atomic(path: PathLike, obj: Any, *, indent: Optional[int] = 2) -> Path:
    """``json.dumps(obj)`` written atomically. Serialised first, so a bad value writes nothing."""
    return write_text_atomic(path, json.dumps(obj, indent=indent) + "\n")


def save_safetensors_atomic(tensors: Mapping[str, torch.Tensor], path: PathLike,
                            metadata: Optional[Mapping[str, str]] = None) -> Path:
    """``safetensors.torch.save_file`` made atomic; tensors are made contiguous and moved to the CPU."""
    from safetensors.torch import save_file

    plain = {name: tensor.detach().contiguous().cpu() for name, tensor in tensors.items()}
    meta = None if metadata is None else {str(k): str(v) for k, v in metadata.items()}
    return _write_atomic(path, lambda temporary: save_file(plain, str(temporary), metadata=meta))

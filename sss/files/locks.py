"""Folder locks: two processes never do one folder's work at once.

POSIX ``flock``: the kernel drops the lock when its holder dies, so a crash never leaves a stale
lock behind.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Optional

from .atomic import PathLike

__all__ = ["FolderBusy", "folder_lock"]

logger = logging.getLogger(__name__)


class FolderBusy(RuntimeError):
    """Another process holds the lock that :func:`folder_lock` was asked not to wait for."""


@contextlib.contextmanager
def folder_lock(folder: PathLike, name: str, *, wait: bool = True, waiting: Optional[str] = None):
    """Hold the exclusive lock ``folder/name`` while the block runs.

    Where another process holds it, ``wait=True`` logs ``waiting`` (if given) and waits for it;
    ``wait=False`` raises :class:`FolderBusy` at once. The lock file stays (removing it would let
    a third process lock a new file while the second still holds the old one); it is empty and
    harmless. Where ``fcntl`` is missing (Windows) nothing is locked.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / name).exists() and not (folder / name).is_file():
        raise ValueError(f"{folder / name} is the lock file of {folder} but is not a file; remove it")
    with open(folder / name, "a") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise FolderBusy(f"{folder} is in use by another process (it holds {folder / name})") from None
            if waiting:
                logger.info("%s", waiting)
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

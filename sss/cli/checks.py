"""Checks of command-line values where they enter, before any model is loaded.

Each check raises ``ValueError`` naming the flag and the value (``main`` prints it as one line
and exits 2): an output folder that is a file or cannot be written, a device this machine lacks,
a ``--data`` path that does not exist, an ``--option`` whose value has the wrong type for the
editor's config field, a number out of range.
"""
from __future__ import annotations

import argparse
import collections.abc
import contextlib
import dataclasses
import os
import tempfile
import typing
from pathlib import Path
from typing import Iterator, List


def positive_int(text: str) -> int:
    """argparse ``type`` for counts (``--limit``, ``--max-steps``...): an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def nonempty(text: str) -> str:
    """argparse ``type`` for names and paths: '' would silently mean the current folder or nothing."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a name or path, got an empty string")
    return text


def nonempty_path(text: str) -> Path:
    return Path(nonempty(text))


def seed(text: str) -> int:
    """argparse ``type`` for ``--seed``: an integer torch and numpy can take (0 <= seed < 2**63)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 0 <= value < 2 ** 63:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to 2**63 - 1, got {text!r}")
    return value


def coefficient(text: str) -> float:
    """argparse ``type`` for ``--sss-c``: a number in [0, 1] (Eq. 10's C)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def check_device(name: str) -> None:
    """``--device``: a device name torch knows, and one this machine has ('auto' always passes).

    The rules are the library's own (:func:`sss.models.as_device`), so the command line and
    ``load_model`` never disagree about a device.
    """
    from ..models import as_device

    if name != "auto":
        as_device(name, what="--device")


def check_data(source: str, flag: str = "--data") -> None:
    """A ``PATH[:format]`` that names a local path must exist (a hub id is left to ``datasets``)."""
    if source == "demo":
        return
    from ..data.readers import parse_source

    path, data_format = parse_source(source)
    if os.path.exists(path):
        return
    looks_local = (data_format is not None or Path(path).suffix in (".json", ".jsonl")
                   or path.startswith(("/", ".", "~")) or os.sep + os.sep in path or path.count("/") > 1)
    if looks_local:
        raise ValueError(f"{flag} {source}: no such file or folder")


@contextlib.contextmanager
def loading_data(source: str, flag: str = "--data") -> Iterator[None]:
    """Turn what ``datasets.load_dataset`` raises for an unknown source into a ValueError naming ``flag``."""
    try:
        yield
    except ValueError:
        raise
    except Exception as error:  # ConnectionError, FileNotFoundError, DatasetNotFoundError...
        from ..data.readers import parse_source

        what = ("a folder that datasets could not read as a dataset" if os.path.isdir(parse_source(source)[0])
                else "not a local file or folder, and datasets could not load it")
        raise ValueError(f"{flag} {source}: {what} "
                         f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})") from error


def _created_parents(path: Path) -> List[Path]:
    """The folders ``path.mkdir(parents=True)`` would create, deepest first."""
    missing = []
    while not path.exists():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    return missing


@contextlib.contextmanager
def output_folder(path: Path, flag: str = "--out") -> Iterator[Path]:
    """Create and probe ``path`` for writing now; if the command then fails, remove what this made.

    A path that is a file, lies under a file, or cannot be written is a ValueError naming
    ``flag``. Folders this created are removed again on failure when they are still empty, so a
    failed run does not leave an empty output folder behind.
    """
    path = Path(path)
    too_long = next((part for part in path.parts if len(part.encode()) > 255), None)
    if too_long is not None:
        raise ValueError(f"{flag} {str(path)[:80]}...: a folder name is {len(too_long.encode())} bytes long; "
                         "file systems allow 255")
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path} is a file, not a folder")
    created = _created_parents(path)
    blocker = next((p for p in [c.parent for c in created[-1:]] if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise ValueError(f"{flag} {path}: {blocker} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        _remove_empty(created)
        raise ValueError(f"{flag} {path}: cannot write there ({error.strerror or error})") from None
    try:
        yield path
    except BaseException:
        _remove_empty(created)
        raise


def _remove_empty(folders: List[Path]) -> None:
    from ..eval.report_folder import LOCK_FILE

    for folder in folders:  # deepest first
        with contextlib.suppress(OSError):
            lock = folder / LOCK_FILE
            if lock.is_file() and [p.name for p in folder.iterdir()] == [LOCK_FILE]:
                lock.unlink()
            folder.rmdir()  # fails, harmlessly, unless empty


# -- --option against the editor's config dataclass ------------------------------------------------

def _describe(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    if origin in (tuple, list, collections.abc.Sequence):
        return f"a list of {_describe(args[0]).removeprefix('an ').removeprefix('a ')}s" if args else "a list"
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    return {int: "an integer", float: "a number", bool: "true or false", str: "text"}.get(hint, str(hint))


def _fits(value, hint) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is typing.Any:
        return True
    if origin is typing.Union:
        return any(_fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (tuple, list, collections.abc.Sequence):
        if not isinstance(value, list):  # one element for a list of them (layers=5 for [5]), as editors allow
            return bool(args) and args[-1] is Ellipsis and _fits(value, args[0])
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_fits(v, a) for v, a in zip(value, args))
        return not args or all(_fits(v, args[0]) for v in value)
    if origin in (dict, collections.abc.Mapping):
        return isinstance(value, dict)
    if origin is typing.Literal:
        return value in args
    return True  # a type this check does not know: the editor's own validation decides


def check_editor_options(cls, options: dict) -> None:
    """Each ``--option KEY=VALUE`` must name a field of ``cls.config_class`` and fit its type."""
    config_class = getattr(cls, "config_class", None)
    if config_class is None or not dataclasses.is_dataclass(config_class):
        return
    fields = {f.name for f in dataclasses.fields(config_class)}
    hints = typing.get_type_hints(config_class)
    for key, value in options.items():
        if key not in fields:
            raise ValueError(f"--option {key}: {cls.display_name} has no option {key!r}; its options are "
                             f"{', '.join(sorted(fields))}")
        if key in hints and not _fits(value, hints[key]):
            shown = value if not isinstance(value, str) else repr(value)
            raise ValueError(f"--option {key}={shown}: {key} takes {_describe(hints[key])}, got "
                             f"{type(value).__name__} {value!r}")

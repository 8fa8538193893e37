"""A study file's tables checked by type and range before any cell runs: a scale's settings, its
editor options, the regularizers (expanded into one setting per combination)."""
from __future__ import annotations

import dataclasses
import itertools
import math
from typing import List, Optional, Sequence

from ..editors import editor_class, editor_names

__all__ = ["check_editor_overrides", "check_settings", "expand_regularizers"]


def _count(value, *, allow_none=False) -> bool:
    return (value is None and allow_none) or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)


def _integers(value, *, low: int) -> bool:
    return (isinstance(value, list) and bool(value)
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= low for v in value))


def check_settings(settings: dict, where: str) -> None:
    """A scale's settings by type and range, before any cell runs (a count of 0 or -1 would run
    silently: a cell done with no records, all requests but one, a study of no cells)."""
    problems = []
    for key in ("train_requests", "val_requests", "train_steps", "episodes_per_step", "edit_batch_size",
                "val_every", "val_episodes", "eval_batch_size"):
        if not _count(settings[key]):
            problems.append(f"{key} must be a positive integer, got {settings[key]!r}")
    if not _count(settings["eval_requests"], allow_none=True):
        problems.append(f"eval_requests must be a positive integer (or absent: every request), "
                        f"got {settings['eval_requests']!r}")
    if not _integers(settings["seeds"], low=0):
        problems.append(f"seeds must be a non-empty list of integers >= 0, got {settings['seeds']!r}")
    if not _integers(settings["sizes"], low=1):
        problems.append(f"sizes must be a non-empty list of positive integers, got {settings['sizes']!r}")
    if not isinstance(settings["generate"], bool):
        problems.append(f"generate must be true or false, got {settings['generate']!r}")
    for key in ("model", "device"):
        if not isinstance(settings[key], str) or not settings[key].strip():
            problems.append(f"{key} must be a name, got {settings[key]!r}")
    if not isinstance(settings["train_lr"], dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
            for v in settings["train_lr"].values()):
        problems.append(f"train_lr must be a table of positive numbers, got {settings['train_lr']!r}")
    if problems:
        raise ValueError(f"{where}: " + "; ".join(problems))


def check_editor_overrides(editor: str, options, where: str) -> None:
    """A scale's ``[editors.NAME]`` table: a registered editor, and only fields of its config
    (checked here, not when the first cell of that editor is built after others ran)."""
    if editor not in editor_names():
        raise ValueError(f"{where}: options for unknown editor {editor!r}; registered editors: "
                         f"{', '.join(editor_names())}")
    if not isinstance(options, dict):
        raise ValueError(f"{where}: the options of {editor} must be a table, got {options!r}")
    fields = {f.name for f in dataclasses.fields(editor_class(editor).config_class)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ValueError(f"{where}: {editor} has no option(s) {unknown}; its options are {', '.join(sorted(fields))}")


def expand_regularizers(entries: Sequence, where: str) -> List[Optional[dict]]:
    """``"none"`` -> None; a table -> SSS settings, one per combination of its list-valued fields."""
    allowed = {"C", "target", "tokens", "reduction"}
    result: List[Optional[dict]] = []
    for entry in entries:
        if entry == "none":
            result.append(None)
            continue
        if not isinstance(entry, dict) or set(entry) - allowed:
            raise ValueError(f"{where}: a regularizer is 'none' or a table with keys {sorted(allowed)}, got {entry!r}")
        keys = sorted(entry)
        values = [entry[k] if isinstance(entry[k], list) else [entry[k]] for k in keys]
        for combination in itertools.product(*values):
            settings = {"C": 0.9, "target": "last_hidden", "tokens": "prompt", "reduction": "mean"}
            settings.update(dict(zip(keys, combination)))
            settings["C"] = float(settings["C"])
            result.append(settings)
    return result

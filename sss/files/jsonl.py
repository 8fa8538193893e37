"""Reading JSON, and JSON Lines logs that a kill can only tear at the end.

A log is appended one whole line per record, flushed and fsynced. A kill can only tear the
*last* line: :func:`read_jsonl` drops it with a warning, and the next :func:`append_jsonl` cuts it
off before writing, so a log never has damage in the middle unless something else wrote there
(then reading it is an error naming the line).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, List

from .atomic import PathLike

__all__ = ["append_jsonl", "read_json", "read_jsonl"]

logger = logging.getLogger(__name__)
_CHUNK = 1 << 20


def read_json(path: PathLike) -> Any:
    """Parse a JSON file; a missing, unreadable or malformed one is a ``ValueError`` naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read {path}: {error}") from error
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg}); "
                         "the file is damaged or was not written by sss") from error


def _cut_torn_tail(handle) -> None:
    """If the file does not end in a newline, its last line was torn by a kill: cut it off."""
    handle.seek(0, os.SEEK_END)
    size = handle.tell()
    if size == 0:
        return
    handle.seek(size - 1)
    if handle.read(1) == b"\n":
        return
    end = size
    while end > 0:
        start = max(0, end - _CHUNK)
        handle.seek(start)
        chunk = handle.read(end - start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            end = start + newline + 1
            break
        end = start
    logger.warning("%s: its last line was torn (an interrupted write); dropping it before appending",
                   handle.name)
    handle.truncate(end)


def append_jsonl(path: PathLike, record: Any, *, ensure_ascii: bool = True) -> None:
    """Append ``record`` as one JSON line, flushed and fsynced: after a kill it is whole or absent.

    ``ensure_ascii=False`` keeps non-ASCII text as UTF-8 rather than ``\\u`` escapes (the study's
    ``records.jsonl`` is written that way); either reads back the same.
    """
    line = (json.dumps(record, ensure_ascii=ensure_ascii) + "\n").encode("utf-8")  # never a raw newline
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        _cut_torn_tail(handle)
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl(path: PathLike) -> List[Any]:
    """The records of a JSON Lines file.

    A damaged *last* line is what a kill during :func:`append_jsonl` leaves: it is dropped with a
    warning naming the file and line. A damaged line anywhere else is a ``ValueError`` naming
    them, since no interrupted append can cause it.
    """
    path = Path(path)
    try:
        lines = path.read_bytes().split(b"\n")
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist") from None
    # What follows the last newline is an append cut short, even where it happens to parse:
    # append_jsonl cuts it off before its next write, so counting it here would lose it later.
    tail = lines.pop()
    if tail.strip():
        logger.warning("%s: line %d is torn (an interrupted write?); dropping it", path, len(lines) + 1)
    numbered = [(number, line) for number, line in enumerate(lines, start=1) if line.strip()]
    records = []
    for position, (number, line) in enumerate(numbered):
        try:
            records.append(json.loads(line.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            if position == len(numbered) - 1:
                logger.warning("%s: line %d is torn (an interrupted write?); dropping it", path, number)
                break
            raise ValueError(f"{path}: line {number} is not valid JSON ({error}); the file is damaged in the "
                             "middle, which an interrupted write cannot cause") from error
    return records

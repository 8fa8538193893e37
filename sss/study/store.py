"""The files that make a study resumable.

* ``records.jsonl``: one finished request per line, flushed and fsynced as it is produced; a
  line torn by a crash (no newline, or not JSON) is dropped when the file is read back.
* ``done``: written last, atomically (write a temporary file, then rename), once the cell's
  report is complete. A folder with ``done`` is never run again.
* unedited observations: one JSON file per (model, requests, measuring settings), shared by
  every cell that measures the same requests on the same model (JSON floats round-trip exactly,
  so a cached observation scores exactly like a fresh one).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Optional

from ..eval import ProbeSpec
from ..eval.measure import Observation
from ..eval.metrics import TeacherForced

RECORDS = "records.jsonl"
DONE = "done"


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def read_jsonl(path: Path) -> List[dict]:
    """Every complete line of ``path``; a torn last line is cut off the file so appends stay clean."""
    if not path.exists():
        return []
    data = path.read_bytes()
    rows, good = [], 0
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
        good += len(line)
    if good != len(data):
        with open(path, "r+b") as handle:
            handle.truncate(good)
    return rows


class RecordLog:
    """Append-only ``records.jsonl`` of one cell."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / RECORDS
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def read(self) -> List[dict]:
        return read_jsonl(self.path)

    def append(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def reset(self) -> None:
        if self.path.exists():
            self.path.unlink()


def is_done(folder: Path) -> bool:
    return (Path(folder) / DONE).exists()


def mark_done(folder: Path, info: dict) -> None:
    write_atomic(Path(folder) / DONE, json.dumps(info, indent=2) + "\n")


# -- unedited observations -----------------------------------------------------------------------

def _teacher_forced(data: Optional[dict]) -> Optional[TeacherForced]:
    if data is None:
        return None
    return TeacherForced(tuple(data["predicted"]), tuple(data["labels"]), data["mean_log_prob"])


def _tf_dict(value: Optional[TeacherForced]) -> Optional[dict]:
    if value is None:
        return None
    return {"predicted": list(value.predicted), "labels": list(value.labels), "mean_log_prob": value.mean_log_prob}


def observation_to_dict(observation: Observation) -> dict:
    return {"probes": [p.to_dict() for p in observation.probes], "answers": [_tf_dict(a) for a in observation.answers],
            "rivals": [_tf_dict(r) for r in observation.rivals], "generations": observation.generations}


def observation_from_dict(data: dict) -> Observation:
    return Observation(probes=[ProbeSpec(**p) for p in data["probes"]],
                       answers=[_teacher_forced(a) for a in data["answers"]],
                       rivals=[_teacher_forced(r) for r in data["rivals"]], generations=data["generations"])


class UneditedCache:
    """Observations of the unedited model, one file per request set, read back on every run."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def load(self) -> Dict[str, Observation]:
        if not self.path.exists():
            return {}
        return {key: observation_from_dict(value) for key, value in json.loads(self.path.read_text()).items()}

    def save(self, observations: Dict[str, Observation]) -> None:
        write_atomic(self.path, json.dumps({k: observation_to_dict(v) for k, v in observations.items()},
                                           ensure_ascii=False))

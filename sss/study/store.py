"""The files that make a study resumable.

* ``records.jsonl``: one finished request per line, flushed and fsynced as it is produced; a
  line torn by a crash (no newline, or not JSON) is dropped when the file is read back and cut
  off before the next append (``sss.files.append_jsonl``/``read_jsonl``).
* ``done``: written last, atomically (``sss.files.write_json_atomic``), once the cell's
  report is complete. A folder with ``done`` is never run again.
* unedited observations: one JSON file per (model, requests, measuring settings), shared by
  every cell that measures the same requests on the same model (JSON floats round-trip exactly,
  so a cached observation scores exactly like a fresh one).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional

from ..eval import ProbeSpec
from ..eval.measure import Observation
from ..eval.metrics import TeacherForced
from ..files import append_jsonl, read_json, read_jsonl, write_json_atomic, write_text_atomic

RECORDS = "records.jsonl"
DONE = "done"


class RecordLog:
    """Append-only ``records.jsonl`` of one cell."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / RECORDS
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def read(self) -> List[dict]:
        """Every whole record; a line torn by a crash is dropped (and cut off by the next append)."""
        return read_jsonl(self.path) if self.path.exists() else []

    def read_requests(self, count: int) -> List[dict]:
        """The records of a cell of ``count`` requests, each at most once: a record with another
        index (a duplicate, or out of range) would be counted or paired wrongly, so it is an error
        naming its line."""
        records, seen = self.read(), set()
        for line, record in enumerate(records, start=1):
            index = record.get("index") if isinstance(record, dict) else None
            problem = ("names no request index" if not isinstance(index, int) or isinstance(index, bool) else
                       f"is for request {index}, out of range for {count} requests" if not 0 <= index < count else
                       f"repeats request {index}" if index in seen else None)
            if problem:
                raise ValueError(f"{self.path}, record {line}, {problem}: remove that line (the cell then resumes "
                                 "and measures the request again)")
            seen.add(index)
        return records

    def append(self, record: dict) -> None:
        append_jsonl(self.path, record, ensure_ascii=False)

    def reset(self) -> None:
        if self.path.exists():
            self.path.unlink()


def is_done(folder: Path) -> bool:
    return (Path(folder) / DONE).exists()


def mark_done(folder: Path, info: dict) -> None:
    write_json_atomic(Path(folder) / DONE, info)


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
        return {key: observation_from_dict(value) for key, value in read_json(self.path).items()}

    def save(self, observations: Dict[str, Observation]) -> None:
        write_text_atomic(self.path, json.dumps({k: observation_to_dict(v) for k, v in observations.items()},
                                                ensure_ascii=False))

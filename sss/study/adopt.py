"""Adopting cells written before cells had an identity (``sss study FILE --adopt``).

Such a folder is named ``<label>-<hash of its settings>`` and has no ``identity.json``, so it is
stale for this version of sss. When its records are those of the data read now — every record's
request index, case id and prompt equal the cell's request at that index, and it holds one
record per request — it is given the identity it would have (this data's fingerprint, this
model's weights, this code's versions) and renamed to its current folder. ``identity.json`` then
says ``"adopted"``: the records were checked against the data, the weights and code were not (a
record does not say which weights produced it). A folder whose records differ is left as it is.
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import List, Tuple

from ..files import read_jsonl, write_json_atomic
from .identity import IDENTITY_FILE, cell_identity, hashed_config
from .requests import eval_requests
from .runner import cell_folder, unedited_cache_path
from .spec import config_hash
from .store import RECORDS, is_done

__all__ = ["adopt_legacy_cells"]

logger = logging.getLogger(__name__)


def adopt_legacy_cells(study, out, note: str = "records checked against the data at adoption") -> List[Tuple[str, str]]:
    """Adopt every finished legacy cell of ``study`` in ``out``; returns ``(cell label, outcome)``."""
    outcomes = []
    for cell in study.cells:
        legacy = Path(out) / study.name / f"{cell.label}-{config_hash(cell.config)}"
        current = cell_folder(out, cell)
        if not legacy.is_dir() or legacy == current or (legacy / IDENTITY_FILE).exists():
            continue
        if current.exists():
            outcomes.append((cell.label, f"kept: {current.name} already exists"))
            continue
        problem = _mismatch(study, cell, legacy)
        if problem:
            outcomes.append((cell.label, f"not adopted: {problem}"))
            continue
        _adopt_unedited_cache(study, cell, out)
        write_json_atomic(legacy / IDENTITY_FILE, {"identity": cell_identity(study, cell),
                                                   "config": hashed_config(cell.config), "adopted": note})
        os.rename(legacy, current)
        outcomes.append((cell.label, f"adopted as {current.name}"))
        logger.info("adopted %s as %s", legacy, current.name)
    return outcomes


def _adopt_unedited_cache(study, cell, out) -> None:
    """The cell's cached unedited observations under their current name (they are of the same
    requests on the same model; only the file name now carries the weights and version too)."""
    keys = [config_hash(r.to_dict()) for r in eval_requests(study, cell)]
    legacy, current = (unedited_cache_path(study, cell, out, keys, legacy=flag) for flag in (True, False))
    if legacy.is_file() and not current.exists():
        shutil.copyfile(legacy, current)


def _mismatch(study, cell, folder: Path) -> str:
    if not is_done(folder):
        return "unfinished (rerun it instead)"
    requests = eval_requests(study, cell)
    records = read_jsonl(folder / RECORDS)
    if sorted(r.get("index") for r in records) != list(range(len(requests))):
        return f"{len(records)} records for {len(requests)} requests"
    for record in records:
        request = requests[record["index"]]
        recorded = (record.get("prompt"), str(record.get("case_id")), record.get("target_new", request.target_new))
        if recorded != (request.prompt, str(request.case_id), request.target_new):
            return f"record {record['index']} measured {record.get('prompt')!r}, the data now has {request.prompt!r}"
    return ""

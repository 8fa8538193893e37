"""A folder of evaluation reports shared by many runs: one file per run, one summary of them all.

* A report's file name says which run it is: ``results_<label>_<hash>.json``, the hash taken over
  everything that decides the run's numbers (:func:`run_identity`: model, data, requests, mode,
  seed, the editor's whole configuration and regularizer, a checkpoint, a limit...). Runs that
  differ in any of these never overwrite each other; the same run again replaces its own file.
* :func:`write_summary` reads every ``results_*.json`` in the folder and writes ``table.md``
  (one table per set of runs on the same model, requests and mode; a column per report) and
  ``comparison.png`` (every column). Two commands writing into one folder at once take a lock
  around it, and each writes its reports before taking it, so the last summary shows them all.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Dict, List, Tuple, Union

from ..files import folder_lock, read_json
from .figures import draw_comparison
from .paired import paired_comparisons, reading
from .report import JSON_KEYS, TABLE_ROWS, category_rows, markdown_table, report_dict, write_report_dict
from .results import EvalResults
from .statistics import DEFAULT_RESAMPLES

logger = logging.getLogger(__name__)

LOCK_FILE = ".sss-reports.lock"
# Settings that do not change what a run measures (a torchrun run equals a one-process one).
_NOT_IDENTITY = ("world_size", "eval_batch_size")


def _requests_key(records: List[dict]) -> str:
    seen = [(r.get("case_id"), r.get("prompt"), r.get("target_new")) for r in records]
    return hashlib.sha256(json.dumps(seen, default=str).encode()).hexdigest()[:12]


def run_identity(report: dict) -> dict:
    """What decides a report's numbers (JSON-ready); equal identities mean the same run."""
    settings = {k: v for k, v in report.get("settings", {}).items() if k not in _NOT_IDENTITY}
    return {"model": report.get("model"), "data": report.get("data"), "requests": _requests_key(report["records"]),
            "settings": settings, "editor": report.get("editor"), "extra": report.get("extra")}


def report_file_name(report: dict, label: str) -> str:
    """``results_<label>_<8 hex digits of the run's identity>.json``."""
    digest = hashlib.sha256(json.dumps(run_identity(report), sort_keys=True, default=str).encode()).hexdigest()[:8]
    slug = re.sub(r"[^A-Za-z0-9.=-]+", "_", label.lower().replace("w/ ", "")).strip("_")
    return f"results_{slug}_{digest}.json"


def write_run_report(folder: Union[str, Path], results: EvalResults, **kwargs) -> Path:
    """Write ``results``' report into ``folder`` under its own name (atomically); return the path."""
    report = report_dict(results, **kwargs)
    return write_report_dict(report, Path(folder) / report_file_name(report, results.label))


def read_reports(folder: Union[str, Path]) -> List[Tuple[Path, dict]]:
    """Every readable report ``results_*.json`` in ``folder``; unreadable ones are skipped with a warning."""
    found = []
    for path in sorted(Path(folder).glob("results_*.json")):
        try:
            report = read_json(path)
        except ValueError as error:
            logger.warning("skipping %s: %s", path, error)
            continue
        if not isinstance(report, dict) or any(key not in report for key in JSON_KEYS):
            logger.warning("skipping %s: not an sss evaluation report", path)
            continue
        found.append((path, report))
    return found


def _results(report: dict) -> EvalResults:
    return EvalResults(mode=report["mode"], records=report["records"], editor=report["editor"],
                       settings=report["settings"], curve=report["curve"], summary=report["summary"])


def _flat(value, prefix: str = "") -> Dict[str, str]:
    if isinstance(value, dict):
        out: Dict[str, str] = {}
        for key, inner in value.items():
            out.update(_flat(inner, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): json.dumps(value, default=str)}


def _column_names(reports: List[dict]) -> List[str]:
    """Each report's label; labels two reports share get what tells them apart, e.g. ``FT-L [seed=1]``."""
    labels = [_results(r).label for r in reports]
    flats = [_flat(run_identity(r)) for r in reports]
    names = []
    for i, label in enumerate(labels):
        twins = [j for j, other in enumerate(labels) if other == label]
        if len(twins) == 1:
            names.append(label)
            continue
        keys = sorted({k for j in twins for k in set(flats[j]) | set(flats[i])
                       if flats[j].get(k) != flats[i].get(k)})
        shown = ", ".join(f"{k.rsplit('.', 1)[-1]}={flats[i].get(k, '–')}" for k in keys[:3])
        names.append(f"{label} [{shown}]" if shown else f"{label} #{twins.index(i) + 1}")
    return names


def summary_groups(reports: List[dict]) -> List[Tuple[str, Dict[str, EvalResults]]]:
    """``[(title, {column name: results})]``: one group per model, requests and mode."""
    groups: Dict[tuple, List[dict]] = {}
    for report in reports:
        key = (report.get("model"), report["mode"], _requests_key(report["records"]))
        groups.setdefault(key, []).append(report)
    out = []
    for members in groups.values():
        # Without a regularizer first, then by coefficient: the paper's column order.
        members.sort(key=lambda r: (str(r["editor"].get("display") or r["editor"].get("editor")),
                                    r.get("regularizer") is not None, json.dumps(r.get("regularizer"), default=str),
                                    json.dumps(run_identity(r), sort_keys=True, default=str)))
        first = members[0]
        datas = sorted({str(r.get("data")) for r in members})
        title = (f"{first.get('model')} · {', '.join(datas)} · {len(first['records'])} requests · "
                 f"mode {first['mode']}")
        out.append((title, dict(zip(_column_names(members), (_results(r) for r in members)))))
    return out


def group_table(columns: Dict[str, EvalResults], *, resamples: int = DEFAULT_RESAMPLES) -> str:
    """The Table-1 layout with the unedited model, plus the per-category rows when there are any.

    A run with a regularizer beside the same editor's run without one (on the same requests:
    :func:`summary_groups` groups by requests) shows each paired difference with its 95%
    bootstrap interval and p-value, and a line under the table says what they resolve.
    """
    differences = paired_comparisons(columns, TABLE_ROWS, resamples=resamples)
    table = markdown_table(columns, include_unedited=True, differences=differences)
    line = reading(differences)
    if line:
        table += f"\n{line}\n"
    details = category_rows(columns)
    if details:
        table += "\nBy probe category:\n\n" + markdown_table(
            columns, include_unedited=True, rows=details,
            differences=paired_comparisons(columns, details, resamples=resamples))
    return table


def write_summary(folder: Union[str, Path]) -> Tuple[Path, Path]:
    """``table.md`` and ``comparison.png`` over every report in ``folder``; returns their paths."""
    from ..files import write_text_atomic

    folder = Path(folder)
    groups = summary_groups([report for _, report in read_reports(folder)])
    if not groups:
        raise ValueError(f"{folder} holds no readable results_*.json report to summarise")
    text = "\n".join(f"{title}\n\n{group_table(columns)}" for title, columns in groups)
    table = write_text_atomic(folder / "table.md", text)
    every = {(name if len(groups) == 1 else f"T{i + 1}: {name}"): results
             for i, (_, columns) in enumerate(groups) for name, results in columns.items()}
    return table, draw_comparison(every, folder / "comparison.png").path


def locked(folder: Union[str, Path]):
    """Hold an exclusive lock on ``folder`` while its reports are written (waits for another writer)."""
    return folder_lock(folder, LOCK_FILE)

"""Writing results out: a JSON file per run, a Markdown table like the paper's Table 1, figures.

* :func:`report_dict` / :func:`write_json`: per-request records, the summary, the editor's and
  the regularizer's configuration, the seed, package versions and the definition of every
  metric protocol (see ``JSON_KEYS``); written atomically. A folder of many runs' reports
  (unique names, one summary of them all) is :mod:`sss.eval.report_folder`.
* :func:`markdown_table`: editors as columns (each without and with SSS), rows reliability,
  generality, locality and portability, each row naming the metric it shows.
* :func:`plot_sequential` (metric vs number of sequential edits), :func:`plot_c_sweep` (metric
  vs the SSS coefficient C) and :func:`plot_comparison` (bars, one group per row of the table).
  Figures use matplotlib's non-interactive "Agg" backend and are written as PNG
  (:mod:`sss.eval.figures`, re-exported here).
"""
from __future__ import annotations

import datetime
import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

from ..files import read_json, write_text_atomic
# Table 1's rows (label, group, metric) live with the figures, which draw them too.
from .figures import TABLE_ROWS, plot_c_sweep, plot_comparison, plot_sequential, pyplot, save_figure  # noqa: F401
from .results import EvalResults

# The keys every JSON report has (tests validate against this).
JSON_KEYS = ("format", "created", "mode", "seed", "model", "data", "editor", "regularizer", "settings", "versions",
             "protocols", "summary", "curve", "records")
REPORT_FORMAT = "sss-eval/1"

_PACKAGES = ("sss-edit", "torch", "transformers", "tokenizers", "numpy", "datasets", "safetensors")


def package_versions() -> Dict[str, Optional[str]]:
    versions: Dict[str, Optional[str]] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def report_dict(results: EvalResults, *, model: Optional[str] = None, data: Optional[str] = None,
                extra: Optional[dict] = None) -> dict:
    """Everything needed to read and reproduce one run, as JSON-ready data."""
    report = {
        "format": REPORT_FORMAT,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mode": results.mode,
        "seed": results.settings.get("seed"),
        "model": model or results.settings.get("model"),
        "data": data,
        "editor": results.editor,
        "regularizer": results.editor.get("regularizer"),
        "settings": results.settings,
        "versions": package_versions(),
        "protocols": results.protocols,
        "summary": results.summary,
        "curve": results.curve,
        "records": results.records,
    }
    if extra:
        report["extra"] = extra
    return report


def write_json(results: EvalResults, path: Union[str, Path], **kwargs) -> Path:
    """Write :func:`report_dict` to ``path`` atomically (folders are created).

    To keep every run of a shared folder, name the file by the run:
    :func:`sss.eval.report_folder.write_run_report`.
    """
    return write_report_dict(report_dict(results, **kwargs), path)


def write_report_dict(report: dict, path: Union[str, Path]) -> Path:
    """Write a :func:`report_dict` to ``path``: the old file or the new one, never half of one."""
    return write_text_atomic(path, json.dumps(report, indent=2, ensure_ascii=False))


def load_json(path: Union[str, Path]) -> EvalResults:
    """Read a report written by :func:`write_json` back into :class:`EvalResults` (for tables, plots)."""
    report = read_json(path)
    if not isinstance(report, dict):
        raise ValueError(f"{path} is not an sss evaluation report: it holds a {type(report).__name__}")
    missing = [key for key in JSON_KEYS if key not in report]
    if missing:
        raise ValueError(f"{path} is not an sss evaluation report: it lacks {', '.join(missing)}")
    return EvalResults(mode=report["mode"], records=report["records"], editor=report["editor"],
                       settings=report["settings"], curve=report["curve"], summary=report["summary"])


# -- the table -----------------------------------------------------------------------------------

def _percent(value: Optional[float]) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def markdown_table(runs: Union[Sequence[EvalResults], Mapping[str, EvalResults]], *, dataset: Optional[str] = None,
                   include_unedited: bool = False, rows: Sequence[Tuple[str, str, str]] = TABLE_ROWS,
                   differences: Optional[Mapping[str, Mapping[str, object]]] = None) -> str:
    """A Markdown table laid out like the paper's Table 1 (values in percent).

    ``runs``: results in column order (name each column by :attr:`EvalResults.label`), or a
    mapping from column name to results. ``include_unedited`` adds a first column with the
    unedited model's numbers (from the first run's ``pre`` phase). Empty cells (–) mark a group
    the data has no probes for. ``differences``: ``{column: {row label: PairedComparison}}``
    (:func:`sss.eval.paired.paired_comparisons`); each such cell then reads
    ``70.52 (Δ +0.6 [−1.2, +2.4], p 0.43)``, the paired difference with its baseline column.
    """
    from .statistics import format_difference

    differences = differences or {}
    columns = dict(runs) if isinstance(runs, Mapping) else _by_label(runs)
    if not columns:
        raise ValueError("markdown_table needs at least one run")
    headers = (["Dataset"] if dataset is not None else []) + ["Metric"]
    cells: Dict[str, list] = {label: [] for label, _, _ in rows}
    if include_unedited:
        first = next(iter(columns.values()))
        headers.append("Unedited")
        for label, group, metric in rows:
            # Agreement of the unedited model with itself is 1 by definition.
            cells[label].append(_percent(1.0 if metric == "agreement" and first.value(group, "token_acc", "pre")
                                         is not None else first.value(group, metric, "pre")))
    for name, results in columns.items():
        headers.append(name)
        for label, group, metric in rows:
            text = _percent(results.value(group, metric))
            comparison = differences.get(name, {}).get(label)
            if comparison is not None:
                text += f" ({format_difference(comparison.difference, p_value=comparison.p_value)})"
            cells[label].append(text)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for i, (label, group, metric) in enumerate(rows):
        lead = ([dataset if i == 0 else ""] if dataset is not None else []) + [f"{label} ({metric})"]
        lines.append("| " + " | ".join(lead + cells[label]) + " |")
    return "\n".join(lines) + "\n"


def category_rows(runs: Union[Sequence[EvalResults], Mapping[str, EvalResults]]) -> Tuple[Tuple[str, str, str], ...]:
    """Rows for every locality and portability category the runs measured (the paper's Tables 3
    and 5: Pre-Neighbor, Post-Neighbor, Distract-Neighbor, Unrelated Attributes, Subject Replace,
    Reversed Relation, One-Hop), for :func:`markdown_table`'s ``rows``."""
    from ..data import CATEGORY_TITLES, LOCALITY_CATEGORIES, PORTABILITY_CATEGORIES

    seen = set()
    for results in (runs.values() if isinstance(runs, Mapping) else runs):
        seen.update(results.summary.get("post", {}))
    rows = []
    for family, categories, metric in (("locality", LOCALITY_CATEGORIES, "agreement"),
                                       ("portability", PORTABILITY_CATEGORIES, "token_acc")):
        known = list(categories) + sorted(g.split("/", 1)[1] for g in seen
                                          if g.startswith(family + "/") and g.split("/", 1)[1] not in categories)
        for category in known:
            if f"{family}/{category}" in seen:
                # The generic family is "Locality" in the paper's Table 1; here it sits among its siblings.
                title = "Neighborhood" if category == "neighborhood" else CATEGORY_TITLES.get(category, category)
                rows.append((title, f"{family}/{category}", metric))
    return tuple(rows)


def _by_label(runs: Sequence[EvalResults]) -> Dict[str, EvalResults]:
    columns: Dict[str, EvalResults] = {}
    for results in runs:
        label, n = results.label, 2
        while label in columns:  # two runs of the same configuration: number the later ones
            label, n = f"{results.label} #{n}", n + 1
        columns[label] = results
    return columns

"""Writing results out: a JSON file per run, a Markdown table like the paper's Table 1, figures.

* :func:`report_dict` / :func:`write_json`: per-request records, the summary, the editor's and
  the regularizer's configuration, the seed, package versions and the definition of every
  metric protocol (see ``JSON_KEYS``); written atomically. A folder of many runs' reports
  (unique names, one summary of them all) is :mod:`sss.eval.report_folder`.
* :func:`markdown_table`: editors as columns (each without and with SSS), rows reliability,
  generality, locality and portability, each row naming the metric it shows.
* :func:`plot_sequential` (metric vs number of sequential edits), :func:`plot_c_sweep` (metric
  vs the SSS coefficient C) and :func:`plot_comparison` (bars, one group per row of the table).
  Figures use matplotlib's non-interactive "Agg" backend and are written as PNG.
"""
from __future__ import annotations

import datetime
import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

from ..files import read_json, write_text_atomic
from .results import EvalResults

# The keys every JSON report has (tests validate against this).
JSON_KEYS = ("format", "created", "mode", "seed", "model", "data", "editor", "regularizer", "settings", "versions",
             "protocols", "summary", "curve", "records")
REPORT_FORMAT = "sss-eval/1"

# Table 1's rows: (label, group, metric). Reliability, generality and portability are EasyEdit's
# teacher-forced token accuracy; locality is agreement with the unedited model.
TABLE_ROWS: Tuple[Tuple[str, str, str], ...] = (
    ("Reliability", "reliability", "token_acc"),
    ("Generality", "generality", "token_acc"),
    ("Locality", "locality", "agreement"),
    ("Portability", "portability", "token_acc"),
)
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
                   include_unedited: bool = False, rows: Sequence[Tuple[str, str, str]] = TABLE_ROWS) -> str:
    """A Markdown table laid out like the paper's Table 1 (values in percent).

    ``runs``: results in column order (name each column by :attr:`EvalResults.label`), or a
    mapping from column name to results. ``include_unedited`` adds a first column with the
    unedited model's numbers (from the first run's ``pre`` phase). Empty cells (–) mark a group
    the data has no probes for.
    """
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
            cells[label].append(1.0 if metric == "agreement" and first.value(group, "token_acc", "pre") is not None
                                else first.value(group, metric, "pre"))
    for name, results in columns.items():
        headers.append(name)
        for label, group, metric in rows:
            cells[label].append(results.value(group, metric))
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for i, (label, group, metric) in enumerate(rows):
        lead = ([dataset if i == 0 else ""] if dataset is not None else []) + [f"{label} ({metric})"]
        lines.append("| " + " | ".join(lead + [_percent(v) for v in cells[label]]) + " |")
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


# -- figures -------------------------------------------------------------------------------------

def pyplot():
    """matplotlib.pyplot on the non-interactive backend (shared with ``sss.study.figures``)."""
    import matplotlib

    matplotlib.use("Agg")  # no display; also safe under torchrun and in CI
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: Union[str, Path]) -> Path:
    """Lay ``figure`` out, write it as a PNG at ``path`` (making its folder) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot().close(figure)
    return path


def plot_sequential(runs: Mapping[str, EvalResults], path: Union[str, Path],
                    rows: Sequence[Tuple[str, str, str]] = TABLE_ROWS[:3]) -> Path:
    """Metric vs the number of sequential edits n, one panel per row, one line per run.

    Each run needs a ``curve`` (``evaluate(..., mode="sequential", checkpoints=[...])``).
    """
    plt = pyplot()
    figure, axes = plt.subplots(1, len(rows), figsize=(4 * len(rows), 3.2), squeeze=False)
    for name, results in runs.items():
        if not results.curve:
            raise ValueError(f"run {name!r} has no sequential curve (use mode='sequential' with checkpoints)")
        for axis, (label, group, metric) in zip(axes[0], rows):
            points = [(p["edits"], p["summary"].get("post", {}).get(group, {}).get(metric)) for p in results.curve]
            points = [(n, 100 * v) for n, v in points if v is not None]
            if points:
                axis.plot(*zip(*points), marker="o", label=name)
    for axis, (label, _, metric) in zip(axes[0], rows):
        axis.set(title=f"{label} ({metric})", xlabel="number of edits n", ylabel="%", ylim=(-2, 102))
        axis.set_xscale("log")
        axis.grid(alpha=0.3)
    axes[0][0].legend()
    return save_figure(figure, path)


def plot_c_sweep(runs: Mapping[float, EvalResults], path: Union[str, Path],
                 rows: Sequence[Tuple[str, str, str]] = TABLE_ROWS) -> Path:
    """Each row's metric vs the SSS coefficient C (the paper's Figure 3)."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(5, 3.5))
    values = sorted(runs)
    for label, group, metric in rows:
        points = [(c, runs[c].value(group, metric)) for c in values]
        points = [(c, 100 * v) for c, v in points if v is not None]
        if points:
            axis.plot(*zip(*points), marker="o", label=f"{label} ({metric})")
    axis.set(xlabel="C", ylabel="%", title="Impact of C", ylim=(-2, 102))
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return save_figure(figure, path)


def plot_comparison(runs: Mapping[str, EvalResults], path: Union[str, Path], *, include_unedited: bool = True,
                    rows: Sequence[Tuple[str, str, str]] = TABLE_ROWS) -> Path:
    """Grouped bars: one group per table row, one bar per run (and the unedited model)."""
    plt = pyplot()
    series: Dict[str, list] = {}
    if include_unedited and runs:
        first = next(iter(runs.values()))
        series["Unedited"] = [1.0 if m == "agreement" and first.value(g, "token_acc", "pre") is not None
                              else first.value(g, m, "pre") for _, g, m in rows]
    for name, results in runs.items():
        series[name] = [results.value(g, m) for _, g, m in rows]
    figure, axis = plt.subplots(figsize=(1.6 * len(rows) + 2, 3.5))
    width = 0.8 / max(len(series), 1)
    for k, (name, values) in enumerate(series.items()):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(rows))]
        axis.bar(xs, [0 if v is None else 100 * v for v in values], width, label=name)
    axis.set_xticks(range(len(rows)), [f"{label}\n({metric})" for label, _, metric in rows], fontsize=8)
    axis.set(ylabel="%", ylim=(0, 105))
    axis.legend(fontsize=8)
    axis.grid(axis="y", alpha=0.3)
    return save_figure(figure, path)

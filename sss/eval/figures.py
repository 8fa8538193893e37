"""Figures of evaluation results: metric vs n sequential edits, metric vs C, and the comparison of
runs, whose bars carry 95% bootstrap intervals and whose second panel draws each paired
difference with its interval (the same numbers as the table's)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

from .paired import paired_comparisons, per_request
from .results import EvalResults
from .statistics import DEFAULT_RESAMPLES, Interval, mean_interval

__all__ = ["DrawnComparison", "draw_comparison", "plot_c_sweep", "plot_comparison", "plot_sequential", "pyplot",
           "save_figure"]

# Table 1's rows: (label, group, metric). Reliability, generality and portability are EasyEdit's
# teacher-forced token accuracy; locality is agreement with the unedited model.
TABLE_ROWS: Tuple[Tuple[str, str, str], ...] = (
    ("Reliability", "reliability", "token_acc"),
    ("Generality", "generality", "token_acc"),
    ("Locality", "locality", "agreement"),
    ("Portability", "portability", "token_acc"),
)


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


@dataclass
class DrawnComparison:
    """What :func:`draw_comparison` drew: the file, each bar's interval and each paired difference's."""

    path: Path
    bars: Dict[str, List[Optional[Interval]]] = field(default_factory=dict)  # series -> per row (None: no bar)
    differences: Dict[str, Dict[str, Optional[Interval]]] = field(default_factory=dict)  # column -> row label


def _unedited_values(results: EvalResults, group: str, metric: str) -> List[float]:
    # Agreement of the unedited model with itself is 1 by definition.
    if metric == "agreement":
        return [1.0] * len(per_request(results, group, "token_acc", "pre"))
    return list(per_request(results, group, metric, "pre").values())


def draw_comparison(runs: Mapping[str, EvalResults], path: Union[str, Path], *, include_unedited: bool = True,
                    rows: Sequence[Tuple[str, str, str]] = TABLE_ROWS, resamples: int = DEFAULT_RESAMPLES,
                    seed: int = 0) -> DrawnComparison:
    """Bars (one group per table row, one bar per run and the unedited model) with 95% bootstrap
    intervals over requests; beside them, where runs have a baseline (:func:`sss.eval.paired.baselines`),
    each paired difference with its 95% interval, as the table reports it."""
    plt = pyplot()
    drawn = DrawnComparison(Path(path))
    series: Dict[str, List[List[float]]] = {}
    if include_unedited and runs:
        first = next(iter(runs.values()))
        series["Unedited"] = [_unedited_values(first, g, m) for _, g, m in rows]
    for name, results in runs.items():
        series[name] = [list(per_request(results, g, m).values()) for _, g, m in rows]
    comparisons = paired_comparisons(runs, rows, resamples=resamples, seed=seed)
    panels = 2 if comparisons else 1
    figure, axes = plt.subplots(1, panels, figsize=(1.6 * len(rows) + 2 + 3.2 * (panels - 1), 3.6), squeeze=False,
                                gridspec_kw={"width_ratios": [2, 1][:panels]})
    axis = axes[0][0]
    width = 0.8 / max(len(series), 1)
    for k, (name, per_row) in enumerate(series.items()):
        intervals = [mean_interval(v, resamples=resamples, seed=seed) if v else None for v in per_row]
        drawn.bars[name] = intervals
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(rows))]
        heights = [0 if iv is None else 100 * iv.estimate for iv in intervals]
        errors = [[0 if iv is None else 100 * (iv.estimate - iv.low) for iv in intervals],
                  [0 if iv is None else 100 * (iv.high - iv.estimate) for iv in intervals]]
        axis.bar(xs, heights, width, yerr=errors, capsize=2, label=name)
    axis.set_xticks(range(len(rows)), [f"{label}\n({metric})" for label, _, metric in rows], fontsize=8)
    axis.set(ylabel="% (bars: 95% bootstrap interval)", ylim=(0, 105))
    axis.legend(fontsize=7)
    axis.grid(axis="y", alpha=0.3)
    if comparisons:
        axis = axes[0][1]
        for k, (name, by_row) in enumerate(comparisons.items()):
            drawn.differences[name] = {label: (c.difference if c is not None else None) for label, c in by_row.items()}
            ys = [i + (k - (len(comparisons) - 1) / 2) * 0.2 for i in range(len(rows))]
            for y, (label, _, _) in zip(ys, rows):
                c = by_row.get(label)
                if c is not None:
                    d = c.difference
                    axis.errorbar(100 * d.estimate, y, xerr=[[100 * (d.estimate - d.low)], [100 * (d.high - d.estimate)]],
                                  fmt="o", capsize=3, color=f"C{k + len(series) - len(comparisons)}")
        axis.axvline(0, color="black", linewidth=0.8)
        reach = max([5.0] + [100 * max(abs(d.low), abs(d.high)) for by_row in drawn.differences.values()
                             for d in by_row.values() if d is not None])
        axis.set_xlim(-1.1 * reach, 1.1 * reach)
        axis.set_yticks(range(len(rows)), [label for label, _, _ in rows], fontsize=8)
        axis.invert_yaxis()
        axis.set(xlabel="\u0394 points vs the same editor without it", title="paired difference, 95% interval",
                 ylim=(len(rows) - 0.5, -0.5))
        axis.grid(axis="x", alpha=0.3)
    save_figure(figure, drawn.path)
    return drawn


def plot_comparison(runs: Mapping[str, EvalResults], path: Union[str, Path], *, include_unedited: bool = True,
                    rows: Sequence[Tuple[str, str, str]] = TABLE_ROWS) -> Path:
    """:func:`draw_comparison`, returning the file's path."""
    return draw_comparison(runs, path, include_unedited=include_unedited, rows=rows).path

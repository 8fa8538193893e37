"""The study's figures, with error bars: metrics vs C (bands), metrics vs n, SSS vs damage.

Each takes the points ``sss.study.summary`` computed (means with 95% bootstrap intervals) and
writes a PNG with matplotlib's non-interactive backend.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Tuple

from ..eval.report import pyplot, save_figure


def _panels(labels, width=4.0):
    plt = pyplot()
    figure, axes = plt.subplots(1, len(labels), figsize=(width * len(labels), 3.2), squeeze=False)
    return figure, dict(zip(labels, axes[0]))


def plot_c_sweep(points: Dict[tuple, list], path) -> Path:
    """``points[(dataset, target, metric label)] = [(C, mean, low, high)]``: one panel per metric,
    one line per (dataset, target), the 95% interval as a band."""
    labels = list(dict.fromkeys(label for _, _, label in points))
    figure, axes = _panels(labels)
    for (dataset, target, label), series in points.items():
        series = sorted(series)
        cs = [p[0] for p in series]
        axis = axes[label]
        axis.plot(cs, [100 * p[1] for p in series], marker="o", label=f"{dataset} {target}")
        axis.fill_between(cs, [100 * p[2] for p in series], [100 * p[3] for p in series], alpha=0.2)
    for label, axis in axes.items():
        axis.set(title=label, xlabel="C", ylabel="%", ylim=(-2, 102))
        axis.grid(alpha=0.3)
    next(iter(axes.values())).legend(fontsize=7)
    return save_figure(figure, path)


def plot_sequential(points: Dict[tuple, list], path) -> Path:
    """``points[(editor, dataset, regularizer, metric label)] = [(n, mean, low, high)]``: metric vs n
    (log scale) with 95% error bars, one line per (editor, dataset, regularizer)."""
    labels = list(dict.fromkeys(key[3] for key in points))
    figure, axes = _panels(labels)
    for (editor, dataset, reg, label), series in points.items():
        series = sorted(series)
        ns, means = [p[0] for p in series], [100 * p[1] for p in series]
        errors = [[100 * (p[1] - p[2]) for p in series], [100 * (p[3] - p[1]) for p in series]]
        axes[label].errorbar(ns, means, yerr=errors, marker="o", capsize=3, label=f"{editor} {dataset} {reg}")
    for label, axis in axes.items():
        axis.set(title=label, xlabel="number of sequential edits n", ylabel="%", ylim=(-2, 102))
        axis.set_xscale("log")
        axis.grid(alpha=0.3)
    next(iter(axes.values())).legend(fontsize=7)
    return save_figure(figure, path)


def plot_scatter(scatter: Dict[Tuple[str, str, str], tuple], path) -> Path:
    """``scatter[(dataset, editor, reading)] = (scores, damage)``: one panel per reading."""
    readings = list(dict.fromkeys(key[2] for key in scatter))
    figure, axes = _panels(readings)
    for (dataset, editor, reading), (scores, damage) in scatter.items():
        axes[reading].scatter(scores, damage, s=10, alpha=0.6, label=f"{editor} {dataset}")
    for reading, axis in axes.items():
        axis.set(title=f"pre-edit SSS ({reading})", xlabel="SSS score (log)", ylabel="locality damage (1 - agreement)")
        axis.set_xscale("log")
        axis.grid(alpha=0.3)
    next(iter(axes.values())).legend(fontsize=7)
    return save_figure(figure, path)

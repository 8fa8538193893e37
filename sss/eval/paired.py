"""Paired comparisons of runs on the same requests: which column is compared with which, and how.

A run with a regularizer is compared with the run of the same editor without one (its baseline),
request by request: the per-request values of each table row are paired by request (position,
case id and prompt: two runs pair only on the requests they share), and
:func:`~sss.eval.statistics.compare_paired` gives the mean difference, its 95% paired bootstrap
interval and the sign-flip p-value, the same function the study's tables use.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from .results import EvalResults
from .statistics import DEFAULT_RESAMPLES, PairedComparison, compare_paired, format_difference

__all__ = ["baselines", "paired_arrays", "paired_comparisons", "per_request", "reading", "request_key"]

Row = Tuple[str, str, str]  # (label, group, metric), as the tables' rows
RequestKey = Tuple[int, str, str]


def request_key(record: dict) -> RequestKey:
    """Which request a record measured: its position, case id and prompt."""
    return int(record["index"]), str(record.get("case_id")), str(record.get("prompt"))


def per_request(results: EvalResults, group: str, metric: str, phase: str = "post") -> Dict[RequestKey, float]:
    """``{request: value}`` of one group's metric (requests without the group are absent)."""
    values = {}
    for record in results.records:
        value = record.get(phase, {}).get(group, {}).get(metric)
        if value is not None:
            values[request_key(record)] = value
    return values


def paired_arrays(a: Mapping, b: Mapping) -> Tuple[np.ndarray, np.ndarray]:
    """The values of the requests both sides have, in one order."""
    shared = sorted(set(a) & set(b))
    return np.array([a[k] for k in shared], float), np.array([b[k] for k in shared], float)


def baselines(columns: Mapping[str, EvalResults]) -> Dict[str, str]:
    """``{column: its baseline column}``: every run with a regularizer, against the run of the same
    editor (and the same settings otherwise) without one, where the columns hold it."""
    def editor_without_regularizer(results: EvalResults) -> tuple:
        editor = {k: v for k, v in results.editor.items() if k != "regularizer"}
        return repr(sorted(editor.items())), results.mode

    plain = {editor_without_regularizer(r): name for name, r in columns.items() if not r.editor.get("regularizer")}
    return {name: plain[editor_without_regularizer(r)] for name, r in columns.items()
            if r.editor.get("regularizer") and editor_without_regularizer(r) in plain}


def paired_comparisons(columns: Mapping[str, EvalResults], rows: Sequence[Row], *,
                       resamples: int = DEFAULT_RESAMPLES, seed: int = 0
                       ) -> Dict[str, Dict[str, Optional[PairedComparison]]]:
    """``{column: {row label: comparison with its baseline, or None}}`` for every column with a baseline."""
    out: Dict[str, Dict[str, Optional[PairedComparison]]] = {}
    for name, base in baselines(columns).items():
        out[name] = {}
        for label, group, metric in rows:
            a, b = paired_arrays(per_request(columns[name], group, metric), per_request(columns[base], group, metric))
            out[name][label] = compare_paired(a, b, resamples=resamples, seed=seed) if a.size >= 2 else None
    return out


def reading(comparisons: Mapping[str, Mapping[str, Optional[PairedComparison]]]) -> str:
    """One line that says what the intervals resolve (or that they resolve nothing), with n."""
    found = [(name, label, c) for name, rows in comparisons.items() for label, c in rows.items() if c is not None]
    if not found:
        return ""
    sizes = sorted({c.n for _, _, c in found})
    n = f"n = {sizes[0]}" if len(sizes) == 1 else f"n = {sizes[0]}–{sizes[-1]}"
    resolved = [(name, label, c) for name, label, c in found if c.difference.low > 0 or c.difference.high < 0]
    if not resolved:
        return (f"No difference resolved at {n} (every 95% paired interval includes 0); docs/results.md has the "
                "study's comparisons at n = 100 requests × 3 seeds.")
    shown = "; ".join(f"{label} {format_difference(c.difference, p_value=c.p_value)} ({name})"
                      for name, label, c in resolved)
    return f"Resolved at {n} (95% paired interval excludes 0): {shown}. Every other difference includes 0."

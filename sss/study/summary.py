"""A study's finished cells -> Markdown tables and figures (``<out>/<study>/summary.md``, ``*.png``).

Every comparison is paired: a cell with SSS against the cell without it that has the same
editor, dataset, seed (and sequence length), on the same requests. With one seed a cell reads
``70.5 (Δ +0.6 [−1.2, +2.4])`` with the paired bootstrap interval and the sign-flip p-value;
with several training seeds the interval is the two-level bootstrap (seeds, then requests) and
the p-value is the sign-flip test on each request's difference averaged over the seeds.
Unfinished cells are left out and listed.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..eval.paired import paired_arrays, per_request
from ..eval.report import TABLE_ROWS
from .figures import plot_c_sweep, plot_scatter, plot_sequential
from .identity import request_id
from .requests import eval_requests
from .runner import cell_folder, load_cell_results
from .spec import Study, regularizer_label
from ..eval.statistics import compare_paired, format_cell, hierarchical_bootstrap, paired_bootstrap, sign_flip_test, \
    spearman_bootstrap
from .store import RecordLog, is_done

logger = logging.getLogger(__name__)
CATEGORY_ROWS: Tuple[Tuple[str, str, str], ...] = (
    ("Reliability", "reliability", "token_acc"), ("Generality", "generality", "token_acc"),
    ("Pre-Neighbor", "locality/pre_neighbor", "agreement"), ("Post-Neighbor", "locality/post_neighbor", "agreement"),
    ("Distract-Neighbor", "locality/distract_neighbor", "agreement"),
    ("Unrelated Attributes", "locality/unrelated_attribute", "agreement"),
    ("Subject Replace", "portability/subject_replace", "token_acc"),
    ("Reversed Relation", "portability/reversed_relation", "token_acc"),
    ("One-Hop", "portability/one_hop", "token_acc"),
)


def compare_seeds(with_runs: Sequence, without_runs: Sequence, group: str, metric: str, resamples: int
                  ) -> Optional[Tuple[str, str, str]]:
    """``(formatted cell, p-value, requests)`` of one metric over paired runs (one per seed)."""
    pairs = [paired_arrays(per_request(w, group, metric), per_request(b, group, metric))
             for w, b in zip(with_runs, without_runs)]
    pairs = [(a, b) for a, b in pairs if a.size]
    if not pairs:
        return None
    n = pairs[0][0].size
    if len(pairs) == 1:
        comparison = compare_paired(*pairs[0], resamples=resamples)
        return format_cell(comparison.with_mean, comparison.difference), f"{comparison.p_value:.3f}", str(n)
    interval = hierarchical_bootstrap([a for a, _ in pairs], [b for _, b in pairs], resamples=resamples)
    mean_with = float(np.mean([a.mean() for a, _ in pairs]))
    p = "–"
    if len({a.size for a, _ in pairs}) == 1:  # the same requests in every seed: average them, then test
        p = f"{sign_flip_test(np.mean([a for a, _ in pairs], 0), np.mean([b for _, b in pairs], 0), permutations=resamples):.3f}"
    return format_cell(mean_with, interval), p, f"{n} × {len(pairs)} seeds"


def mean_over(runs: Sequence, group: str, metric: str, phase: str = "post") -> Optional[float]:
    values = [v for run in runs for v in per_request(run, group, metric, phase).values()]
    return float(np.mean(values)) if values else None


@dataclass
class PartialResults:
    """The records an unfinished cell has written so far (``Finished(partial=True)``)."""

    records: List[dict]


class Finished:
    """The finished cells of a study, loaded once, grouped by what pairs them."""

    def __init__(self, study: Study, out: Path, *, partial: bool = False):
        self.study, self.out = study, Path(out)
        self.runs: Dict[tuple, object] = {}
        self.configs: Dict[tuple, dict] = {}
        self.missing: List[str] = []
        self.partial: List[str] = []  # "label (k of n requests)" of the unfinished cells read
        for cell in study.cells:
            try:
                folder = cell_folder(out, cell)  # its identity: reads the cell's data
            except ValueError as error:  # e.g. a training file absent here: nothing of it can be read
                logger.warning("%s is left out of the summary: %s", cell.label, error)
                self.missing.append(cell.label)
                continue
            if is_done(folder):
                results = load_cell_results(folder)
            else:
                records = RecordLog(folder).read() if partial and folder.is_dir() else []
                if not records:
                    self.missing.append(cell.label)
                    continue
                # Pairing is by request index, so a comparison uses only the requests both sides
                # have recorded so far.
                results = PartialResults(records)
                self.partial.append(f"{cell.label} ({len(records)} of {cell.config['length'] or cell.config['data']['requests']} requests)")
            check_requests(study, cell, folder, results.records)
            c = cell.config
            reg = regularizer_label(c["regularizer"])
            key = (c["editor"], c["data"]["name"], c.get("length"), reg, c["seed"])
            self.runs[key], self.configs[key] = results, c

    def measured(self, rows) -> list:
        """The rows some finished cell has values for."""
        return [row for row in rows if any(per_request(run, row[1], row[2]) for run in self.runs.values())]

    def groups(self) -> Dict[tuple, Dict[str, Dict[int, object]]]:
        """``{(editor, dataset, length): {regularizer label: {seed: results}}}`` in grid order."""
        grouped: Dict[tuple, Dict[str, Dict[int, object]]] = defaultdict(lambda: defaultdict(dict))
        for (editor, dataset, length, reg, seed), results in self.runs.items():
            grouped[(editor, dataset, length)][reg][seed] = results
        return grouped


def check_requests(study: Study, cell, folder: Path, records: List[dict]) -> None:
    """Refuse records of other requests than the cell's (each names its request by ``request_id``;
    records written before ids existed are paired by position, case id and prompt, as before)."""
    ids = [request_id(r) for r in eval_requests(study, cell)]
    for record in records:
        index, recorded = record.get("index"), record.get("request_id")
        if recorded is not None and (not isinstance(index, int) or not 0 <= index < len(ids) or ids[index] != recorded):
            raise ValueError(f"{folder}: record {index} measured request {recorded}, not the cell's request "
                             f"({ids[index] if isinstance(index, int) and 0 <= index < len(ids) else 'none'}): "
                             "its records come from other data and are not paired")


def comparison_table(finished: Finished, rows, resamples: int) -> str:
    lines = ["| Dataset | Editor | n edits | Metric | Unedited | without SSS | with SSS | setting | p | requests |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (editor, dataset, length), by_reg in finished.groups().items():
        base = by_reg.get("base", {})
        for reg, by_seed in by_reg.items():
            if reg == "base":
                continue
            seeds = sorted(set(by_seed) & set(base))
            if not seeds:
                continue
            with_runs, without_runs = [by_seed[s] for s in seeds], [base[s] for s in seeds]
            for label, group, metric in rows:
                compared = compare_seeds(with_runs, without_runs, group, metric, resamples)
                if compared is None:
                    continue
                cell, p, n = compared
                pre = 1.0 if metric == "agreement" else mean_over(without_runs, group, metric, "pre")
                without = mean_over(without_runs, group, metric)
                lines.append(f"| {dataset} | {editor} | {length or 1} | {label} ({metric}) | "
                             f"{format_cell(pre) if pre is not None else '–'} | {format_cell(without)} | "
                             f"{cell} | {reg} | {p} | {n} |")
    return "\n".join(lines) + "\n"


def c_sweep_table(finished: Finished, rows, resamples: int) -> Tuple[str, dict]:
    """Each (target, C) cell against FT-L without SSS; also the points the figure draws."""
    rows = finished.measured(rows)
    lines = ["| Dataset | target | C | " + " | ".join(f"{label} ({metric})" for label, _, metric in rows) + " |",
             "|---|---|---|" + "---|" * len(rows)]
    points: dict = defaultdict(list)  # (dataset, target, label) -> [(C, mean, low, high)]
    for (editor, dataset, _), by_reg in finished.groups().items():
        base = by_reg.get("base", {})
        settings_of = {reg: finished.configs[(editor, dataset, None, reg, min(by_seed))]["regularizer"]
                       for reg, by_seed in by_reg.items() if reg != "base"}
        for reg in sorted(settings_of, key=lambda r: (str(settings_of[r]["target"]), settings_of[r]["C"])):
            by_seed = by_reg[reg]
            if not set(by_seed) & set(base):
                continue
            seed = min(set(by_seed) & set(base))
            run, settings = by_seed[seed], settings_of[reg]
            row = []
            for label, group, metric in rows:
                a, b = paired_arrays(per_request(run, group, metric), per_request(base[seed], group, metric))
                if not a.size:
                    row.append("–")
                    continue
                difference = paired_bootstrap(a, b, resamples=resamples)
                band = paired_bootstrap(a, np.zeros_like(a), resamples=resamples)  # the mean's own interval
                points[(dataset, str(settings["target"]), label)].append((settings["C"], a.mean(), band.low, band.high))
                row.append(format_cell(a.mean(), difference))
            lines.append(f"| {dataset} | {settings['target']} | {settings['C']:g} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n", points


def sss_metric_table(finished: Finished, resamples: int) -> Tuple[str, dict]:
    """Spearman's rho between each pre-edit SSS reading and the locality damage of the edit."""
    lines = ["| Dataset | Editor | SSS reading | requests | Spearman ρ [95% CI] |", "|---|---|---|---|---|"]
    scatter: dict = {}
    for (editor, dataset, _, reg, seed), run in finished.runs.items():
        rows = [r for r in run.records if r.get("sss_score") and "locality" in r.get("post", {})]
        if not rows:
            continue
        damage = np.array([1.0 - r["post"]["locality"]["agreement"] for r in rows])
        for reading in rows[0]["sss_score"]:
            scores = np.array([r["sss_score"][reading] for r in rows])
            scatter[(dataset, editor, reading)] = (scores, damage)
            try:
                corr = spearman_bootstrap(scores, damage, resamples=resamples)
                text = f"{corr.rho:+.2f} [{corr.interval.low:+.2f}, {corr.interval.high:+.2f}]"
            except ValueError as error:  # constant damage: no correlation to estimate
                text = f"undefined ({error})"
            lines.append(f"| {dataset} | {editor} {reg} | {reading} | {len(rows)} | {text} |")
    return "\n".join(lines) + "\n", scatter


def sequential_points(finished: Finished, resamples: int) -> dict:
    """(editor, dataset, regularizer, label) -> [(n, mean, low, high)] for the figure."""
    pooled: dict = defaultdict(lambda: defaultdict(list))  # (..., label, n) -> {request: [value per seed]}
    for (editor, dataset, length, reg, seed), run in finished.runs.items():
        for label, group, metric in TABLE_ROWS[:3]:
            for index, value in per_request(run, group, metric).items():
                pooled[(editor, dataset, reg, label, length)][index].append(value)
    points: dict = defaultdict(list)
    for (editor, dataset, reg, label, length), by_request in sorted(pooled.items(), key=lambda kv: str(kv[0])):
        values = np.array([np.mean(v) for v in by_request.values()])  # each request averaged over seeds
        band = paired_bootstrap(values, np.zeros_like(values), resamples=resamples)
        points[(editor, dataset, reg, label)].append((length, values.mean(), band.low, band.high))
    return points


def summarise_study(study: Study, out, *, resamples: int = 10_000, partial: bool = False) -> Path:
    """Write ``<out>/<study>/summary.md`` (and figures) from the finished cells; return its path.

    ``partial``: also read the records of unfinished cells (a study between sittings); the summary
    lists them and every comparison pairs only the requests both sides have recorded."""
    finished = Finished(study, out, partial=partial)
    folder = Path(out) / study.name
    folder.mkdir(parents=True, exist_ok=True)
    done = len(finished.runs) - len(finished.partial)
    parts = [f"# {study.title}\n", f"Scale `{study.scale}`, model `{study.settings['model']}`; "
             f"{done} of {len(study.cells)} cells finished. Values in percent; "
             "Δ = with SSS − without, paired bootstrap 95% interval; p = paired sign-flip test.\n"]
    if finished.partial:
        parts.append("Read before they finished (pairs use the requests both sides have): "
                     + ", ".join(finished.partial) + "\n")
    if study.summary in ("table", "categories", "sequential"):
        rows = CATEGORY_ROWS if study.summary == "categories" else TABLE_ROWS
        parts.append(comparison_table(finished, finished.measured(rows), resamples))
    if study.summary == "sequential" and finished.runs:
        figure = plot_sequential(sequential_points(finished, resamples), folder / "sequential.png")
        parts.append(f"![metrics vs n]({figure.name})\n")
    if study.summary == "c_sweep":
        table, points = c_sweep_table(finished, TABLE_ROWS[:3] + CATEGORY_ROWS[2:7], resamples)
        parts.append(table)
        if points:
            parts.append(f"![metrics vs C]({plot_c_sweep(points, folder / 'c_sweep.png').name})\n")
    if study.summary == "sss_metric":
        table, scatter = sss_metric_table(finished, resamples)
        parts.append(table)
        if scatter:
            parts.append(f"![SSS vs damage]({plot_scatter(scatter, folder / 'sss_vs_damage.png').name})\n")
    if finished.missing:
        parts.append(f"Not finished ({len(finished.missing)}): " + ", ".join(finished.missing) + "\n")
    path = folder / "summary.md"
    path.write_text("\n".join(parts))
    return path

"""Paired differences in the evaluation's tables and figures, and progress that follows the terminal.

The table's intervals must be the study's (``compare_paired`` on the per-request values of the
requests both runs share), the figure must draw the same ones, and a redirected run must log a
few lines rather than redraw bars.
"""
from __future__ import annotations

import io
import logging

import numpy as np
import pytest

from sss import progress as progress_module
from sss.eval.figures import draw_comparison
from sss.eval.paired import baselines, paired_comparisons
from sss.eval.report import TABLE_ROWS, markdown_table
from sss.eval.report_folder import group_table
from sss.eval.results import EvalResults
from sss.eval.statistics import compare_paired, format_difference, mean_interval

SSS = {"name": "SSSRegularizer", "C": 0.9, "target": "last_hidden", "tokens": "prompt", "reduction": "mean"}


def run(regularizer, reliability, locality, *, skip=()):
    """Results of 30 hand-made requests with the given per-request 0/1 values (``skip``: absent)."""
    records = [{"index": i, "case_id": f"case-{i}", "prompt": f"prompt {i}",
                "pre": {"reliability": {"token_acc": 0.0}, "locality": {"token_acc": 1.0}},
                "post": {"reliability": {"token_acc": float(reliability[i])}, "locality": {"agreement": float(locality[i])}}}
               for i in range(len(reliability)) if i not in skip]
    mean = lambda key, metric: float(np.mean([r["post"][key][metric] for r in records]))  # noqa: E731
    summary = {"pre": {"reliability": {"token_acc": 0.0}, "locality": {"token_acc": 1.0}},
               "post": {"reliability": {"token_acc": mean("reliability", "token_acc")},
                        "locality": {"agreement": mean("locality", "agreement")}}}
    editor = {"editor": "ft-l", "display": "FT-L", "config": {"steps": 25}, "regularizer": regularizer}
    return EvalResults(mode="single", records=records, editor=editor, settings={}, curve=[], summary=summary)


@pytest.fixture
def pair():
    rng = np.random.default_rng(7)
    plain = run(None, rng.random(30) < 0.4, rng.random(30) < 0.9)
    # With SSS: more reliable, and request 3 is missing (pairs are on the shared requests only).
    sss = run(SSS, rng.random(30) < 0.9, rng.random(30) < 0.85, skip={3})
    return {"FT-L": plain, "FT-L w/ SSS (C=0.9)": sss}


def shared_values(columns, group, metric):
    """The study's pairing written out by hand: requests both runs measured, in index order."""
    a = {r["index"]: r["post"][group][metric] for r in columns["FT-L w/ SSS (C=0.9)"].records}
    b = {r["index"]: r["post"][group][metric] for r in columns["FT-L"].records}
    shared = sorted(set(a) & set(b))
    return np.array([a[i] for i in shared]), np.array([b[i] for i in shared])


def test_the_table_shows_the_studys_paired_interval_for_each_row(pair):
    assert baselines(pair) == {"FT-L w/ SSS (C=0.9)": "FT-L"}
    table = group_table(pair, resamples=2000)
    for label, group, metric in TABLE_ROWS[:3:2]:  # reliability and locality have values here
        a, b = shared_values(pair, group, metric)
        assert a.size == 29
        expected = compare_paired(a, b, resamples=2000)
        cell = format_difference(expected.difference, p_value=expected.p_value)
        (line,) = [row for row in table.splitlines() if row.startswith(f"| {label} ({metric})")]
        assert line.endswith(f"({cell}) |"), (line, cell)
    assert "Resolved at n = 29" in table and "Reliability \u0394 +" in table  # +50 points is resolved


def test_a_table_without_a_baseline_has_no_differences(pair):
    alone = {"FT-L w/ SSS (C=0.9)": pair["FT-L w/ SSS (C=0.9)"]}
    assert paired_comparisons(alone, TABLE_ROWS) == {}
    assert "\u0394" not in group_table(alone) and "\u0394" not in markdown_table(alone)


def test_the_figure_draws_the_tables_intervals(pair, tmp_path):
    drawn = draw_comparison(pair, tmp_path / "comparison.png", resamples=2000)
    assert drawn.path.stat().st_size > 1000
    comparisons = paired_comparisons(pair, TABLE_ROWS, resamples=2000)
    for label, comparison in comparisons["FT-L w/ SSS (C=0.9)"].items():
        got = drawn.differences["FT-L w/ SSS (C=0.9)"][label]
        assert (got is None) == (comparison is None) and (got is None or got == comparison.difference)
    # Each bar's error bar is the bootstrap interval of that run's per-request values.
    reliability = [r["post"]["reliability"]["token_acc"] for r in pair["FT-L"].records]
    assert drawn.bars["FT-L"][0] == mean_interval(reliability, resamples=2000)
    assert drawn.bars["Unedited"][0].estimate == 0.0 and drawn.bars["FT-L"][1] is None  # no generality probes


def test_progress_draws_bars_only_on_a_terminal(monkeypatch, caplog):
    class Stream(io.StringIO):
        def __init__(self, tty):
            super().__init__()
            self.tty = tty

        def isatty(self):
            return self.tty

    monkeypatch.setattr(progress_module.sys, "stderr", Stream(True))
    bar = progress_module.progress(range(3), desc="edits")
    assert type(bar).__name__ == "tqdm" or type(bar).__name__.startswith("tqdm")
    bar.close()
    monkeypatch.setattr(progress_module.sys, "stderr", Stream(False))
    with caplog.at_level(logging.INFO, logger="sss.progress"):
        assert list(progress_module.progress(range(50), desc="edits", every=3600)) == list(range(50))
        assert list(progress_module.progress(range(4), desc="steps", inner=True)) == list(range(4))
        assert list(progress_module.progress(range(4), desc="off", enabled=False)) == list(range(4))
        assert list(progress_module.progress(range(3), desc="each", every=0.0)) == list(range(3))
    lines = [r.getMessage() for r in caplog.records]
    # 50 items with a long interval: one closing line; inner loops and disabled ones: nothing;
    # no interval: a line per item (the last one says 3/3).
    assert [line for line in lines if line.startswith("edits")] == [lines[0]] and "edits: 50/50 it (100%)" in lines[0]
    assert not [line for line in lines if line.startswith(("steps", "off"))]
    assert [line.split(",")[0] for line in lines if line.startswith("each")] == \
        ["each: 1/3 it (33%)", "each: 2/3 it (67%)", "each: 3/3 it (100%)"]

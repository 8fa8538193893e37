"""What ``evaluate`` returns: per-request records, their summary, and how they were obtained.

A record is plain JSON-ready data::

    {"index": 3, "case_id": "...", "edit": 3, "prompt": ..., "target_new": ..., "target_true": ...,
     "probes": [{"family", "category", "prompt", "answer", "rival",
                 "pre": {metric: value}, "post": {...}, "pre_generation": str, "post_generation": str}],
     "pre":  {group: {metric: mean over the group's probes}},
     "post": {...}}                                   # and "immediate" in sequential mode

``group`` is a family (reliability, generality, locality, portability) or ``family/category``
(e.g. ``locality/pre_neighbor``). ``pre`` is the unedited model, ``post`` the edited one (in
sequential mode: after the last edit), ``immediate`` right after the request's own edit.
The summary averages each group's per-request means over the requests that have the group.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from .metrics import PROTOCOLS, mean

PHASES = ("pre", "post", "immediate")


def summarise(records: Sequence[dict], phases: Sequence[str] = PHASES) -> dict:
    """``{phase: {group: {metric: mean}}, "requests": {group: count}}`` over ``records``."""
    summary: dict = {}
    counts: Dict[str, int] = {}
    for phase in phases:
        collected: Dict[str, Dict[str, List[float]]] = {}
        for record in records:
            for group, values in record.get(phase, {}).items():
                for metric, value in values.items():
                    if value is not None:
                        collected.setdefault(group, {}).setdefault(metric, []).append(value)
                if phase == "pre":
                    counts[group] = counts.get(group, 0) + 1
        if collected:
            summary[phase] = {group: {metric: mean(v) for metric, v in metrics.items()}
                              for group, metrics in collected.items()}
    summary["requests"] = counts
    return summary


@dataclass
class EvalResults:
    """The outcome of :func:`sss.eval.evaluate`; :mod:`sss.eval.report` writes it out."""

    mode: str
    records: List[dict]
    editor: dict
    settings: dict
    curve: List[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)

    def __post_init__(self):
        self.records = sorted(self.records, key=lambda record: record["index"])
        if not self.summary:
            self.summary = summarise(self.records)

    @property
    def protocols(self) -> Dict[str, str]:
        return dict(PROTOCOLS)

    def value(self, group: str, metric: str, phase: str = "post") -> Optional[float]:
        """One summary number, e.g. ``value("reliability", "token_acc")``; None when not measured."""
        return self.summary.get(phase, {}).get(group, {}).get(metric)

    @property
    def label(self) -> str:
        """How tables name this run: the editor, plus "w/ SSS" when a regularizer was used."""
        # The editor's own display name (Editor.describe() carries it); a report written before
        # describe() did falls back to the registered name.
        name = str(self.editor.get("display") or self.editor.get("editor"))
        regularizer = self.editor.get("regularizer")
        if regularizer:
            kind = "SSS" if regularizer.get("name") == "SSSRegularizer" else regularizer.get("name")
            return f"{name} w/ {kind} (C={regularizer.get('C')})"
        return name

    def to_dict(self) -> dict:
        return {"mode": self.mode, "editor": self.editor, "settings": self.settings, "protocols": self.protocols,
                "summary": self.summary, "curve": self.curve, "records": self.records}

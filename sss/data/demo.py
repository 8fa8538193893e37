"""The built-in demo set: counterfactual edits of well-known facts, written for sss.

``demo_edits.json`` (package data) holds, for each edit: the prompt, subject, true object and
new target, two rephrasings, at least two neighborhood probes (Pre-Neighbors, which share the
true object, where the relation has them; other subjects of the same relation otherwise), a
Post-Neighbor where one exists, and portability probes where one is natural. Every true fact
and every locality probe was answered correctly by greedy decoding of ``smollm2-135m`` before
editing (``tests/test_demo_set.py`` keeps that true). Distract-Neighbors are derived on loading,
as for the datasets.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Tuple

from .probes import PRE_NEIGHBOR, distract_neighbors
from .requests import EditRequest, LocalityProbe, PortabilityProbe

DEMO_PATH = Path(__file__).with_name("demo_edits.json")


def demo_requests(limit: Optional[int] = None) -> list:
    """The demo edits as ``EditRequest``s, in the file's order (relations interleaved).

    ``limit`` takes the first ``limit`` edits, so a short demo still covers many relations.
    ``case_id`` is the edit's id (``"capital/france"``); ``metadata["relation"]`` its relation.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    requests = _load()
    return list(requests[:limit] if limit is not None else requests)


def _load() -> Tuple[EditRequest, ...]:
    with DEMO_PATH.open(encoding="utf-8") as handle:
        edits = json.load(handle)["edits"]
    return tuple(_request(edit) for edit in edits)


def _request(edit: dict) -> EditRequest:
    locality = [LocalityProbe(**probe) for probe in edit["locality"]]
    pre_neighbors = [probe for probe in locality if probe.category == PRE_NEIGHBOR]
    return EditRequest(
        prompt=edit["prompt"],
        target_new=edit["target_new"],
        subject=edit["subject"],
        target_true=edit["target_true"],
        rephrase_prompts=tuple(edit["rephrase_prompts"]),
        locality=(*locality, *distract_neighbors(edit["prompt"], edit["target_new"], pre_neighbors)),
        portability=tuple(PortabilityProbe(**probe) for probe in edit["portability"]),
        case_id=edit["id"],
        metadata={"format": "demo", "relation": edit["relation"]},
    )

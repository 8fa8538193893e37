"""KnowEdit (Zhang et al. 2024), as EasyEdit ships it: ZsRE, wiki_counterfact, and kin.

``{"subject", "prompt", "target_new", "ground_truth" (a string, or a list of accepted answers),
"rephrase_prompt" (optional), "locality": {family: [{"prompt", "ground_truth"}]},
"portability": {family: [{"prompt", "ground_truth"}]}}``. Families map to the paper's probes
(``FAMILIES``); an answer given as a list counts by its first item, the rest go to
``metadata["ground_truth"]``. A family sss does not know is left out and counted in
``ReadStats.skipped_probes``.
"""
from __future__ import annotations

import logging
from typing import Any, List, Mapping, Optional

from ..probes import FORGETFULNESS, ONE_HOP, REVERSED_RELATION, SUBJECT_REPLACE, UNRELATED_ATTRIBUTE
from ..requests import EditRequest
from .base import (Format, ReadStats, case_id, each_record, locality_probes, one_text, paired, portability_probes,
                   subject_in_prompt, texts)

logger = logging.getLogger(__name__)

NAME = "knowedit"

LOCALITY_FAMILIES = {
    "Relation_Specificity": UNRELATED_ATTRIBUTE,
    "Forgetfulness": FORGETFULNESS,
}
PORTABILITY_FAMILIES = {
    "Subject_Aliasing": SUBJECT_REPLACE,
    "Logical_Generalization": REVERSED_RELATION,
    "Reasoning": ONE_HOP,
}
FAMILIES = {**LOCALITY_FAMILIES, **PORTABILITY_FAMILIES}


def convert(records, stats: ReadStats) -> List[Optional[EditRequest]]:
    return each_record(NAME, records, lambda index, record: _convert_one(record, index, stats))


def _family_pairs(entries: Any) -> list:
    """(prompt, answer) pairs of one family; an entry's prompt may itself be a list."""
    pairs = []
    for entry in entries if isinstance(entries, (list, tuple)) else [entries]:
        if isinstance(entry, Mapping):
            pairs.extend(paired(entry.get("prompt"), entry.get("ground_truth")))
    return pairs


def _probes(families: Any, known: dict, make, stats: ReadStats, field: str) -> list:
    made = []
    if not isinstance(families, Mapping):
        return made
    for family, entries in families.items():
        if entries is None:  # a datasets.Dataset fills the families other records have with None
            continue
        category = known.get(family)
        if category is None:
            if not stats.skipped_probes[f"{NAME}: unknown {field} family {family}"]:
                logger.warning("KnowEdit %s family %r is not one sss knows (%s): its probes are left out",
                               field, family, ", ".join(known))
            stats.skip_probe(f"{NAME}: unknown {field} family {family}")
            continue
        made.extend(make(_family_pairs(entries), category, stats, NAME, f"{field}.{family}"))
    return made


def _convert_one(record, index: int, stats: ReadStats) -> EditRequest:
    prompt = one_text(record["prompt"], "prompt")
    answers = texts(record.get("ground_truth"), "ground_truth")
    metadata = {"format": NAME, "index": index}
    if len(answers) > 1:
        metadata["ground_truth"] = answers
    return EditRequest(
        prompt=prompt,
        target_new=one_text(record["target_new"], "target_new"),
        subject=subject_in_prompt(record.get("subject"), prompt, stats),
        target_true=answers[0] if answers else None,
        rephrase_prompts=tuple(texts(record.get("rephrase_prompt"), "rephrase_prompt")),
        locality=tuple(_probes(record["locality"], LOCALITY_FAMILIES, locality_probes, stats, "locality")),
        portability=tuple(_probes(record["portability"], PORTABILITY_FAMILIES, portability_probes, stats,
                                  "portability")),
        case_id=case_id(record, index),
        metadata=metadata,
    )


FORMAT = Format(
    name=NAME,
    required=("prompt", "target_new", "subject", "locality", "portability"),
    convert=convert,
    description="KnowEdit (prompt, target_new, subject, ground_truth, locality{family: [...]}, "
                "portability{family: [...]})",
)

"""ZsRE in the MEND / EasyEdit layout.

``{"subject", "src", "pred", "rephrase", "alt", "answers": [...], "loc": "nq question: ...",
"loc_ans", "cond"}``: the edit asks ``src`` to be answered ``alt`` instead of ``answers[0]``;
``rephrase`` is the generality prompt; ``loc``/``loc_ans`` a Natural Questions pair (kept with
its ``"nq question: "`` prefix, as MEND and EasyEdit feed it). A record with an empty ``alt`` has
no edit to make: it is skipped and counted (``ReadStats.skipped["empty ZsRE alt"]``).
"""
from __future__ import annotations

from typing import List, Optional

from ..probes import NEIGHBORHOOD
from ..requests import EditRequest
from .base import Format, ReadStats, case_id, each_record, locality_probes, one_text, paired, subject_in_prompt, texts

NAME = "zsre"
EMPTY_ALT = "empty ZsRE alt"


def convert(records, stats: ReadStats) -> List[Optional[EditRequest]]:
    return each_record(NAME, records, lambda index, record: _convert_one(record, index, stats))


def _convert_one(record, index: int, stats: ReadStats) -> Optional[EditRequest]:
    target_new = one_text(record["alt"], "alt")
    if target_new is None or not target_new.strip():
        stats.skip_record(index, EMPTY_ALT)
        return None
    prompt = one_text(record["src"], "src")
    answers = texts(record["answers"], "answers")
    metadata = {"format": NAME, "index": index}
    if len(answers) > 1:  # other accepted answers, for metrics that want them
        metadata["answers"] = answers
    return EditRequest(
        prompt=prompt,
        target_new=target_new,
        subject=subject_in_prompt(record.get("subject"), prompt, stats),
        target_true=answers[0] if answers else None,
        rephrase_prompts=tuple(texts(record["rephrase"], "rephrase")),
        locality=tuple(locality_probes(paired(record["loc"], record["loc_ans"]), NEIGHBORHOOD, stats, NAME,
                                       "loc/loc_ans")),
        case_id=case_id(record, index),
        metadata=metadata,
    )


FORMAT = Format(
    name=NAME,
    required=("src", "rephrase", "alt", "answers", "loc", "loc_ans"),
    convert=convert,
    description="ZsRE, MEND/EasyEdit layout (src, rephrase, alt, answers, loc, loc_ans)",
)

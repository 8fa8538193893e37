"""CounterFact in ROME's own layout.

``{"case_id", "requested_rewrite": {"prompt": "{} is located in", "subject", "relation_id",
"target_new": {"str", "id"}, "target_true": {"str", "id"}}, "paraphrase_prompts",
"neighborhood_prompts", "attribute_prompts", "generation_prompts"}``.

The prompt's ``{}`` is filled with the subject. ``neighborhood_prompts`` are other subjects
whose true object is ``target_true`` (Pre-Neighbors), ``attribute_prompts`` other subjects whose
true object is ``target_new`` (Post-Neighbors); each Pre-Neighbor also gives a Distract-Neighbor,
and other records about the same subject with another ``relation_id`` give Unrelated Attributes.
``generation_prompts`` (free-text fluency checks) are not probes and are left out.
"""
from __future__ import annotations

from typing import Any, List, Optional

from ..probes import POST_NEIGHBOR, PRE_NEIGHBOR
from ..requests import EditRequest
from .base import Format, ReadStats, each_record, first_text, is_text, locality_probes, lookup, one_text, texts
from .counterfact import counterfact_request
from .same_subject import same_relation_by_id, unrelated_attributes

NAME = "counterfact-rome"
SLOT = "{}"


def convert(records, stats: ReadStats) -> List[Optional[EditRequest]]:
    subjects = each_record(NAME, records, lambda index, record: _subject(record))
    prompts = each_record(NAME, records, lambda index, record: _fill(record, subjects[index]))
    true_objects = each_record(NAME, records, lambda index, record: first_text(
        one_text(lookup(record, "requested_rewrite.target_true.str"), "requested_rewrite.target_true.str")))
    relations = [lookup(record, "requested_rewrite.relation_id") or f"record {index}"
                 for index, record in enumerate(records)]  # no relation id: never "the same relation"
    unrelated = unrelated_attributes(subjects, prompts, true_objects, relations, same_relation_by_id)
    return each_record(NAME, records, lambda index, record: _convert_one(
        record, index, subjects[index], prompts[index], true_objects[index], unrelated[index], stats))


def _subject(record) -> Optional[str]:
    subject = one_text(lookup(record, "requested_rewrite.subject"), "requested_rewrite.subject")
    return subject if is_text(subject) else None


def _fill(record, subject: Optional[str]) -> str:
    template = one_text(lookup(record, "requested_rewrite.prompt"), "requested_rewrite.prompt")
    if template is None or SLOT not in template:
        raise ValueError(f"requested_rewrite.prompt must contain the subject slot {SLOT!r}, got {template!r}")
    if subject is None:
        raise ValueError("requested_rewrite.subject is empty")
    return template.replace(SLOT, subject)


def _prompt_texts(value: Any, field: str) -> List[str]:
    """Neighbor prompts are strings in counterfact.json, ``{"prompt": ...}`` dicts in some copies."""
    if isinstance(value, (list, tuple)):
        return [text for i, item in enumerate(value) for text in _prompt_texts(item, f"{field}[{i}]")]
    if isinstance(value, dict):
        return texts(value.get("prompt"), f"{field}.prompt")
    return texts(value, field)


def _convert_one(record, index, subject, prompt, target_true, unrelated, stats: ReadStats) -> EditRequest:
    target_new = one_text(lookup(record, "requested_rewrite.target_new.str"), "requested_rewrite.target_new.str")
    pre = locality_probes([(p, target_true) for p in _prompt_texts(record["neighborhood_prompts"],
                                                                   "neighborhood_prompts")],
                          PRE_NEIGHBOR, stats, NAME, "neighborhood_prompts")
    post = locality_probes([(p, target_new) for p in _prompt_texts(record.get("attribute_prompts"),
                                                                   "attribute_prompts")],
                           POST_NEIGHBOR, stats, NAME, "attribute_prompts")
    rewrite = record["requested_rewrite"]
    return counterfact_request(
        record, index, NAME, prompt=prompt, target_new=target_new, subject=subject, target_true=target_true,
        rephrases=_prompt_texts(record["paraphrase_prompts"], "paraphrase_prompts"), neighbors=(*pre, *post),
        pre_neighbors=pre, unrelated=unrelated, relation_id=rewrite.get("relation_id"),
        prompt_template=rewrite.get("prompt"), target_new_id=lookup(rewrite, "target_new.id"),
        target_true_id=lookup(rewrite, "target_true.id"))


FORMAT = Format(
    name=NAME,
    required=("requested_rewrite.prompt", "requested_rewrite.subject", "requested_rewrite.target_new.str",
              "requested_rewrite.target_true.str", "paraphrase_prompts", "neighborhood_prompts"),
    convert=convert,
    description="CounterFact, ROME layout (requested_rewrite with a {} subject slot, paraphrase_prompts, "
                "neighborhood_prompts, attribute_prompts)",
)

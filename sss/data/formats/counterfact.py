"""CounterFact in EasyEdit's layout.

``{"case_id", "prompt", "target_new", "subject", "ground_truth", "rephrase_prompt",
"locality_prompt", "locality_ground_truth"}``. The locality prompt is one of ROME's
neighborhood prompts: its label is the true object, so besides the generic ``neighborhood``
probe (Table 1's locality) it yields a Distract-Neighbor. Unrelated Attributes come from other
records about the same subject (see ``same_subject``).
"""
from __future__ import annotations

from typing import List, Optional

from ..probes import NEIGHBORHOOD, distract_neighbors
from ..requests import EditRequest
from .base import (Format, ReadStats, case_id, each_record, first_text, is_text, locality_probes, one_text, paired,
                   subject_in_prompt, texts)
from .same_subject import relation_words, same_relation_by_words, unrelated_attributes

NAME = "counterfact"


def convert(records, stats: ReadStats) -> List[Optional[EditRequest]]:
    # Type errors surface here, in the first pass, named by each_record.
    prompts = each_record(NAME, records, lambda index, record: one_text(record["prompt"], "prompt"))
    subjects = each_record(NAME, records, lambda index, record: subject_in_prompt(record.get("subject"),
                                                                                  prompts[index], stats))
    true_objects = each_record(NAME, records, lambda index, record: first_text(record["ground_truth"],
                                                                               "ground_truth"))
    usable = [prompt if is_text(prompt) else "" for prompt in prompts]
    relations = [relation_words(prompt, subject) for prompt, subject in zip(usable, subjects)]
    unrelated = unrelated_attributes(subjects, usable, true_objects, relations, same_relation_by_words)
    return each_record(NAME, records, lambda index, record: _convert_one(
        record, index, subjects[index], true_objects[index], unrelated[index], stats))


def _convert_one(record, index, subject, target_true, unrelated, stats: ReadStats) -> EditRequest:
    prompt = record["prompt"]
    target_new = one_text(record["target_new"], "target_new")  # empty: EditRequest names it
    neighbors = locality_probes(paired(record["locality_prompt"], record["locality_ground_truth"]),
                                NEIGHBORHOOD, stats, NAME, "locality_prompt/locality_ground_truth")
    pre_neighbors = [probe for probe in neighbors if probe.answer == target_true]
    return counterfact_request(record, index, NAME, prompt=prompt, target_new=target_new, subject=subject,
                               target_true=target_true, rephrases=texts(record["rephrase_prompt"], "rephrase_prompt"),
                               neighbors=neighbors, pre_neighbors=pre_neighbors, unrelated=unrelated)


def counterfact_request(record, index: int, layout: str, *, prompt, target_new, subject, target_true, rephrases,
                        neighbors, pre_neighbors, unrelated, **metadata) -> EditRequest:
    """One CounterFact request, in either layout (this one and ``rome``): its locality probes are
    the neighbors, a Distract-Neighbor for each Pre-Neighbor, then the Unrelated Attributes."""
    # A malformed prompt or target is reported by EditRequest (naming the field), not here.
    distracts = distract_neighbors(prompt, target_new, pre_neighbors) if is_text(prompt) and is_text(target_new) else ()
    return EditRequest(
        prompt=prompt,
        target_new=target_new,
        subject=subject,
        target_true=target_true,
        rephrase_prompts=tuple(rephrases),
        locality=(*neighbors, *distracts, *unrelated),
        case_id=case_id(record, index),
        metadata={"format": layout, "index": index, **metadata},
    )


FORMAT = Format(
    name=NAME,
    required=("prompt", "target_new", "ground_truth", "rephrase_prompt", "locality_prompt",
              "locality_ground_truth"),
    convert=convert,
    description="CounterFact, EasyEdit layout (prompt, target_new, ground_truth, rephrase_prompt, "
                "locality_prompt, locality_ground_truth)",
)

"""Unrelated Attributes from other records: other relations of the same subject.

The paper's example: after editing "Alfred Kubel has citizenship from Germany -> Finland", the
answer to "What is Alfred Kubel's sex or gender?" should not move. CounterFact has no such probe
per record, but many subjects occur in several records; a record about another relation of the
same subject, with its *true* object as label, is exactly such a probe.

"Another relation" needs care: most repeated subjects repeat the *same* one-to-many relation
("The twin city of Beirut is" / "Beirut is a twin city of"). ROME's layout names the relation
(``relation_id``); EasyEdit's does not, so there two prompts count as the same relation when,
with the subject removed, they share a content word, after mapping the words CounterFact's
templates use for one relation to one stem ("worked in" / "was employed in"). The test errs
towards "same relation": a missed Unrelated Attribute costs a probe, a wrong one a false alarm.
"""
from __future__ import annotations

import re
from typing import FrozenSet, List, Optional, Sequence

from ..probes import UNRELATED_ATTRIBUTE
from ..requests import LocalityProbe
from .base import by_subject

_STOPWORDS = frozenset("""
a an and are as at be by did do does for from has have in into is it its of on or that the their
this to was were what where which who whom whose with it's is, you your
""".split())


# Words that CounterFact's prompt templates use interchangeably for one relation.
_SYNONYMS = {word: group for group, words in {
    "location": "located location locate situated based headquarters headquartered where found",
    "work": "work worked works working employed employment employer",
    "language": "language languages speak speaks spoke speaking understand understood tongue writes wrote",
    "make": "created creator produced producer product produces made makes manufactured developed developer",
    "citizen": "citizen citizenship nationality passport",
    "origin": "originated origin founded formed formation",
    "play": "play plays played playing performs instrument",
    "death": "died expired death",
    "member": "member part",
}.items() for word in words.split()}


def relation_words(prompt: str, subject: Optional[str]) -> FrozenSet[str]:
    """The content words of a prompt once its subject is removed (a relation's fingerprint)."""
    text = prompt.replace(subject, " ") if subject else prompt
    return frozenset(_SYNONYMS.get(word, word) for word in re.findall(r"[a-z]+", text.lower())
                     if len(word) > 2 and word not in _STOPWORDS)


def same_relation_by_words(a: FrozenSet[str], b: FrozenSet[str]) -> bool:
    # A prompt with no content word ("Tom Fletcher, the") says nothing of its relation.
    return not a or not b or bool(a & b)


def same_relation_by_id(a, b) -> bool:
    return a == b


def unrelated_attributes(subjects: Sequence[Optional[str]], prompts: Sequence[str],
                         true_objects: Sequence[Optional[str]], relations: Sequence,
                         same_relation) -> List[List[LocalityProbe]]:
    """For each record, probes from the other records about its subject and another relation."""
    found: List[List[LocalityProbe]] = [[] for _ in subjects]
    for indices in by_subject(subjects).values():
        if len(indices) < 2:
            continue
        for i in indices:
            seen = {prompts[i]}
            for j in indices:
                if (j == i or true_objects[j] is None or prompts[j] in seen
                        or same_relation(relations[i], relations[j])):
                    continue
                seen.add(prompts[j])
                found[i].append(LocalityProbe(prompts[j], true_objects[j], UNRELATED_ATTRIBUTE))
    return found

"""The probe families of the paper (sections 4 and 7), named in one place.

Every ``Probe.category`` that a reader or the demo set writes is one of the constants below, so
reports can break results down by family and a typo cannot create a new one.

Locality probes (the edited model should answer as the unedited model did):

* ``neighborhood`` - a generic out-of-scope input: ZsRE's Natural Questions (``loc``), the
  locality prompt of EasyEdit's CounterFact. This is what Table 1's "Locality" row measures.
* ``pre_neighbor`` - another subject whose true object is the edit's *true* object
  (ROME's ``neighborhood_prompts``).
* ``post_neighbor`` - another subject whose true object is the edit's *new* target
  (ROME's ``attribute_prompts``).
* ``distract_neighbor`` - the edit sentence prepended to a Pre-Neighbor prompt; the label is
  still the true object (Yao et al. 2023). Derived, see :func:`distract_neighbors`.
* ``unrelated_attribute`` - another relation of the edited subject (KnowEdit's
  ``Relation_Specificity``, or another record about the same subject).
* ``forgetfulness`` - KnowEdit's own family, not in the paper: for one-to-many relations, the
  other true objects ("The siblings of X, which is not <new>, are") should survive the edit.

Portability probes (the edited model should answer the consequence of the new fact):

* ``subject_replace`` - the subject replaced by an alias (KnowEdit ``Subject_Aliasing``);
* ``reversed_relation`` - the inverse question (KnowEdit ``Logical_Generalization``);
* ``one_hop`` - one reasoning step through the new fact (KnowEdit ``Reasoning``).
"""
from __future__ import annotations

from typing import Iterable, Tuple

from .requests import LocalityProbe, Probe

NEIGHBORHOOD = "neighborhood"
PRE_NEIGHBOR = "pre_neighbor"
POST_NEIGHBOR = "post_neighbor"
DISTRACT_NEIGHBOR = "distract_neighbor"
UNRELATED_ATTRIBUTE = "unrelated_attribute"
FORGETFULNESS = "forgetfulness"

SUBJECT_REPLACE = "subject_replace"
REVERSED_RELATION = "reversed_relation"
ONE_HOP = "one_hop"

LOCALITY_CATEGORIES: Tuple[str, ...] = (
    NEIGHBORHOOD, PRE_NEIGHBOR, POST_NEIGHBOR, DISTRACT_NEIGHBOR, UNRELATED_ATTRIBUTE, FORGETFULNESS)
PORTABILITY_CATEGORIES: Tuple[str, ...] = (SUBJECT_REPLACE, REVERSED_RELATION, ONE_HOP)

# The paper's names, for tables and figures.
CATEGORY_TITLES = {
    NEIGHBORHOOD: "Locality",
    PRE_NEIGHBOR: "Pre-Neighbor",
    POST_NEIGHBOR: "Post-Neighbor",
    DISTRACT_NEIGHBOR: "Distract-Neighbor",
    UNRELATED_ATTRIBUTE: "Unrelated Attributes",
    FORGETFULNESS: "Forgetfulness",
    SUBJECT_REPLACE: "Subject Replace",
    REVERSED_RELATION: "Reversed Relation",
    ONE_HOP: "One-Hop",
}

_SENTENCE_END = (".", "!", "?")


def edit_sentence(prompt: str, target_new: str) -> str:
    """The edit stated as a sentence: ``prompt + " " + target_new``, closed with a full stop.

    The full stop keeps the neighbor that follows from reading as a continuation of the edit
    ("The capital of France is Rome. The capital of Italy is", not "... Rome The capital ...").
    """
    sentence = f"{prompt.rstrip()} {target_new.strip()}"
    return sentence if sentence.endswith(_SENTENCE_END) else sentence + "."


def distract_neighbors(prompt: str, target_new: str, neighbors: Iterable[Probe]) -> Tuple[LocalityProbe, ...]:
    """Distract-Neighbor probes: the edit sentence prepended to each Pre-Neighbor prompt.

    ``neighbors`` must be Pre-Neighbors (their answer is the edit's true object); the label stays
    that answer, since an edited model that is not distracted still answers the true object.
    """
    prefix = edit_sentence(prompt, target_new)
    return tuple(LocalityProbe(f"{prefix} {probe.prompt}", probe.answer, DISTRACT_NEIGHBOR) for probe in neighbors)

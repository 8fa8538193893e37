"""Measuring one request: every probe it carries, in batched passes, scored by every metric.

A request expands into probes of four families:

* ``reliability``: the edit prompt, expecting ``target_new``;
* ``generality``: each rephrasing, expecting ``target_new``;
* ``locality``: each locality probe, expecting the unedited model's behaviour (``agreement``)
  and, reported separately, its own answer (``token_acc``, ``exact_match``);
* ``portability``: each portability probe, expecting its answer.

:func:`observe_many` runs all probes of many requests through the model together (one
length-bucketed teacher-forced pass over every pair; greedy continuations read off that pass
where it is exact, :mod:`sss.eval.greedy`, generated elsewhere), :func:`observe` one request; and
:func:`score` turns two observations (edited, and the cached unedited one) into metric values.
Keeping the two apart is what lets the protocols compute the unedited observations once.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from ..data import EditRequest
from ..data.tokenize import EncodingCache, encodings_for
from .greedy import greedy_from_teacher_forcing
from .metrics import TeacherForced, agreement, exact_match, greedy_continuations, mean, prob_margin, \
    teacher_forced_with_gaps, token_acc
from .lm_head import shares_context

logger = logging.getLogger(__name__)

FAMILIES = ("reliability", "generality", "locality", "portability")
# Bump when the same observations would be scored otherwise, or other probes measured (a metric's
# definition, a new default): study cells and cached unedited observations record it.
MEASUREMENT_VERSION = 1


@dataclass(frozen=True)
class ProbeSpec:
    """One prompt to check, what it should continue with, and (optionally) the rival answer."""

    family: str
    category: str
    prompt: str
    answer: str
    rival: Optional[str] = None  # prob_margin: `answer` should be more likely than this

    def to_dict(self) -> dict:
        return {"family": self.family, "category": self.category, "prompt": self.prompt, "answer": self.answer,
                "rival": self.rival}


def probes_of(request: EditRequest) -> List[ProbeSpec]:
    """The probes that measure ``request``, in a fixed order (reliability first)."""
    new, true = request.target_new, request.target_true
    probes = [ProbeSpec("reliability", "edit", request.prompt, new, true)]
    probes += [ProbeSpec("generality", "rephrase", text, new, true) for text in request.rephrase_prompts]
    for probe in request.locality:
        # ROME's neighbourhood score: the neighbour keeps its own answer over the new target.
        # Only for CounterFact-like requests (a true target), and not when the answer *is* the new
        # target (Post-Neighbors), where there is nothing to compare.
        rival = new if true is not None and probe.answer.strip() != new.strip() else None
        probes.append(ProbeSpec("locality", probe.category, probe.prompt, probe.answer, rival))
    probes += [ProbeSpec("portability", p.category, p.prompt, p.answer) for p in request.portability]
    return probes


@dataclass
class Observation:
    """Raw outputs of one model state on one request's probes (aligned with ``probes``)."""

    probes: List[ProbeSpec]
    answers: List[TeacherForced]
    rivals: List[Optional[TeacherForced]]
    generations: Optional[List[str]]


def observe(model, tokenizer, request: EditRequest, *, generate: bool = True, batch_size: int = 32,
            cache: Optional[EncodingCache] = None, shortcut: bool = True) -> Observation:
    """Run every probe of ``request`` through ``model``: teacher forcing, then greedy generation."""
    return observe_many(model, tokenizer, [request], generate=generate, batch_size=batch_size, cache=cache,
                        shortcut=shortcut)[0]


def observe_many(model, tokenizer, requests: Sequence[EditRequest], *, generate: bool = True, batch_size: int = 32,
                 cache: Optional[EncodingCache] = None, shortcut: bool = True) -> List[Observation]:
    """:func:`observe` for many requests on one model state, in one length-bucketed pass.

    Every probe (and rival answer) of every request goes into one :func:`teacher_forced` call,
    which sorts the rows by length into batches of at most ``batch_size``; the observations are
    those of :func:`observe` request by request, up to float rounding of other batch shapes.
    ``shortcut``: read greedy continuations off the teacher-forced pass where that is exact
    (:mod:`sss.eval.greedy`); False always calls ``generate``. ``cache``: token ids shared
    across calls (an :class:`sss.data.tokenize.EncodingCache` of ``tokenizer``).
    """
    cache = encodings_for(tokenizer, cache)
    per_request = [probes_of(request) for request in requests]
    probes = [probe for probes in per_request for probe in probes]
    # A rival answer is scored in its probe's own row where the contexts coincide (a one-token
    # rival: the prompt's last position gives its log-probability), else in a row of its own.
    shared: Dict[int, List[int]] = {}
    for i, probe in enumerate(probes):
        if probe.rival is not None and probe.rival.strip() and probe.answer.strip():
            ids = cache.target_ids(probe.rival)
            if shares_context(cache.target_ids(probe.answer), ids):
                shared[i] = ids
    own_rows = [i for i, p in enumerate(probes) if p.rival is not None and i not in shared]
    pairs = [(p.prompt, p.answer) for p in probes] + [(probes[i].prompt, probes[i].rival) for i in own_rows]
    scored = teacher_forced_with_gaps(model, tokenizer, pairs, batch_size=batch_size, cache=cache,
                                      gaps=generate and shortcut,
                                      alternatives=[shared.get(i) for i in range(len(probes))] + [None] * len(own_rows))
    answers = scored.results[:len(probes)]
    rivals: List[Optional[TeacherForced]] = [scored.alternatives[i] for i in range(len(probes))]
    for i, result in zip(own_rows, scored.results[len(probes):]):
        rivals[i] = result
    generations: Optional[List[str]] = None
    if generate and shortcut:
        generations, counts = greedy_from_teacher_forcing(model, tokenizer, [p.prompt for p in probes], answers,
                                                          scored.gaps[:len(probes)], batch_size=batch_size, cache=cache)
        logger.debug("greedy continuations: %s", counts)
    elif generate:
        generations = greedy_continuations(model, tokenizer, [p.prompt for p in probes],
                                           [len(a.labels) for a in answers], batch_size=batch_size, cache=cache)
    observations, start = [], 0
    for request_probes in per_request:
        stop = start + len(request_probes)
        observations.append(Observation(request_probes, answers[start:stop], rivals[start:stop],
                                        None if generations is None else generations[start:stop]))
        start = stop
    return observations


def score(observed: Observation, unedited: Optional[Observation] = None) -> List[Dict[str, float]]:
    """Metric values of every probe. ``unedited`` (the pre-edit observation) enables ``agreement``."""
    if unedited is not None and unedited.probes != observed.probes:
        raise ValueError("the unedited observation belongs to other probes than this one")
    values = []
    for i, probe in enumerate(observed.probes):
        answer = observed.answers[i]
        probe_values = {"token_acc": token_acc(answer)}
        if observed.generations is not None:
            probe_values["exact_match"] = exact_match(observed.generations[i], probe.answer)
        if observed.rivals[i] is not None:
            probe_values["prob_margin"] = prob_margin(answer, observed.rivals[i])
        if probe.family == "locality" and unedited is not None:
            probe_values["agreement"] = agreement(answer, unedited.answers[i])
        values.append(probe_values)
    return values


# Distract-Neighbor prompts carry the edit sentence itself, so they are not out-of-scope inputs
# in the sense of Eq. 3: they are reported on their own row (the paper's Table 3) and kept out of
# the headline locality (Table 1), which would otherwise change meaning with the dataset format.
NOT_IN_HEADLINE = {("locality", "distract_neighbor")}


def family_means(probes: Sequence[ProbeSpec], values: Sequence[Dict[str, float]]) -> Dict[str, Dict[str, float]]:
    """Per family, and per ``family/category`` where a family holds several categories: the mean of
    each metric over that group's probes (EasyEdit averages per request first, then over requests).
    The family mean leaves out the categories in ``NOT_IN_HEADLINE``."""
    groups: Dict[str, List[Dict[str, float]]] = {}
    for probe, probe_values in zip(probes, values):
        if (probe.family, probe.category) not in NOT_IN_HEADLINE:
            groups.setdefault(probe.family, []).append(probe_values)
        if probe.family in ("locality", "portability"):
            groups.setdefault(f"{probe.family}/{probe.category}", []).append(probe_values)
    result = {}
    for group, rows in groups.items():
        names = dict.fromkeys(name for row in rows for name in row)  # in order of appearance
        result[group] = {name: mean([row[name] for row in rows if name in row]) for name in names}
    return result

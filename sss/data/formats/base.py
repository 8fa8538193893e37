"""What every dataset format shares: its required keys, the read statistics, field helpers.

A format is a name, the keys a record must carry (dotted for nested ones), and a ``convert``
function that turns *all* records of a source into one ``EditRequest`` (or ``None``: skipped)
per record. It sees all records at once because some probe families come from other records
(Unrelated Attributes: other records about the same subject).

Records may come from ``json.load`` or from a ``datasets.Dataset``; the latter fills keys that
a record lacks with ``None``, so a ``None`` value counts as absent everywhere here.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from ..requests import EditRequest, LocalityProbe, PortabilityProbe


@dataclass
class ReadStats:
    """What a read did: records seen, requests returned, and everything it left out, with why.

    ``skipped`` counts whole records left out by reason (e.g. ``{"empty ZsRE alt": 2}``) and
    ``skipped_indices`` lists their positions in the source; ``skipped_probes`` counts single
    probes left out (an empty prompt or answer, a KnowEdit family sss does not know);
    ``subjects_dropped`` counts records whose subject does not occur in their prompt, which are
    kept without a subject (see ``docs/data.md``).
    """

    source: str
    format: str
    records: int = 0
    requests: int = 0
    skipped: Counter = field(default_factory=Counter)
    skipped_indices: List[int] = field(default_factory=list)
    skipped_probes: Counter = field(default_factory=Counter)
    subjects_dropped: int = 0

    def skip_record(self, index: int, reason: str) -> None:
        self.skipped[reason] += 1
        self.skipped_indices.append(index)

    def skip_probe(self, reason: str) -> None:
        self.skipped_probes[reason] += 1

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())


Converter = Callable[[Sequence[Mapping[str, Any]], ReadStats], List[Optional[EditRequest]]]


@dataclass(frozen=True)
class Format:
    name: str
    required: Tuple[str, ...]  # dotted paths into the record
    convert: Converter
    description: str


# ----------------------------------------------------------------------------------------------
# Field helpers


def lookup(record: Mapping[str, Any], path: str) -> Any:
    """``record["a"]["b"]`` for ``path="a.b"``; ``None`` where any step is absent."""
    value: Any = record
    for key in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def missing_keys(record: Mapping[str, Any], required: Iterable[str]) -> List[str]:
    return [path for path in required if lookup(record, path) is None]


def _shown(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def one_text(value: Any, field: str) -> Optional[str]:
    """A field that must be one string (a prompt, a target, a subject); ``None`` when absent.

    Anything else (a dict such as ``{"str": "x"}``, a list, a number) is a ``ValueError`` naming
    the field: turning it into text would silently edit towards ``"{'str': 'x'}"``. An empty
    string is returned as is, for ``EditRequest`` to report.
    """
    if value is None or isinstance(value, str):
        return value
    raise ValueError(f"{field} must be a string, got {_shown(value)}")


def texts(value: Any, field: str = "field") -> List[str]:
    """Every non-empty string in a field that may be a string, a list, or a list of lists.

    A leaf that is not a string (a number, a dict) is a ``ValueError`` naming the field.
    """
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, (list, tuple)):
        return [text for i, item in enumerate(value) for text in texts(item, f"{field}[{i}]")]
    raise ValueError(f"{field} must be a string or a list of strings, got {_shown(value)}")


def is_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def first_text(value: Any, field: str = "field") -> Optional[str]:
    """The first non-empty string of a field (KnowEdit and ZsRE give answers as lists)."""
    found = texts(value, field)
    return found[0] if found else None


def record_label(format_name: str, index: int, record: Any) -> str:
    """``record 3 (counterfact, case_id 17)``: how errors name a record."""
    case = record.get("case_id") if isinstance(record, Mapping) else None
    extra = f", case_id {case}" if case is not None else ""
    return f"record {index} ({format_name}{extra})"


def each_record(format_name: str, records: Sequence[Mapping[str, Any]], convert_one: Callable[[int, Any], Any]) -> list:
    """``[convert_one(index, record) ...]``, any ``ValueError`` re-raised naming the record."""
    out = []
    for index, record in enumerate(records):
        try:
            out.append(convert_one(index, record))
        except ValueError as error:
            raise ValueError(f"{record_label(format_name, index, record)}: {error}") from error
    return out


def subject_in_prompt(subject: Any, prompt: str, stats: ReadStats) -> Optional[str]:
    """The subject as spelled in the prompt, or ``None`` (counted) when the prompt lacks it.

    ``EditRequest`` requires its subject to occur in its prompt. Datasets sometimes differ in
    case only ("the Beatles" / "The Beatles"): then the prompt's spelling is used.
    """
    subject = one_text(subject, "subject")
    if subject is None or not subject.strip() or not isinstance(prompt, str):
        return None
    if subject in prompt:
        return subject
    start = prompt.lower().find(subject.lower())
    if start >= 0:
        return prompt[start:start + len(subject)]
    stats.subjects_dropped += 1
    return None


def probes(pairs: Iterable[Tuple[Any, Any]], category: str, kind, stats: ReadStats, source: str,
           field: str = "probe"):
    """Probes from (prompt, answer) pairs; pairs with an empty side are left out and counted.

    ``field`` names the record's field(s) the pairs came from, for errors.
    """
    made = []
    for prompt, answer in pairs:
        prompt, answer = first_text(prompt, f"{field} prompt"), first_text(answer, f"{field} answer")
        if prompt is None or answer is None:
            stats.skip_probe(f"{source}: empty prompt or answer")
            continue
        made.append(kind(prompt, answer, category))
    return made


def locality_probes(pairs, category: str, stats: ReadStats, source: str, field: str = "locality") -> List[LocalityProbe]:
    return probes(pairs, category, LocalityProbe, stats, source, field)


def portability_probes(pairs, category: str, stats: ReadStats, source: str,
                       field: str = "portability") -> List[PortabilityProbe]:
    return probes(pairs, category, PortabilityProbe, stats, source, field)


def paired(prompts: Any, answers: Any) -> List[Tuple[Any, Any]]:
    """Pair a prompt field with its answer field, where both may be single values or lists.

    One answer for several prompts is shared; otherwise they are matched by position.
    """
    if isinstance(prompts, (list, tuple)):
        if isinstance(answers, (list, tuple)) and len(answers) == len(prompts):
            return list(zip(prompts, answers))
        return [(prompt, answers) for prompt in prompts]
    return [(prompts, answers)]


def case_id(record: Mapping[str, Any], index: int) -> str:
    """The record's own ``case_id`` when it has one, else its position in the source."""
    value = record.get("case_id")
    return str(value) if value is not None else str(index)


def by_subject(subjects: Sequence[Optional[str]]) -> Dict[str, List[int]]:
    """Record indices grouped by subject, for the families that come from other records."""
    groups: Dict[str, List[int]] = {}
    for index, subject in enumerate(subjects):
        if subject:
            groups.setdefault(subject, []).append(index)
    return groups

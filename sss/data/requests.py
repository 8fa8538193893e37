"""The records every other part of sss speaks: an edit request and the probes that measure it.

`data` is the ground floor: it imports nothing else of `sss` (docs/data.md), so these are plain
frozen dataclasses that validate themselves on construction.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, List, Optional, Tuple, Union


def _require_text(value, field_name: str, owner: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{owner}.{field_name} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{owner}.{field_name} is empty")
    return value


@dataclass(frozen=True)
class Probe:
    """A prompt whose continuation is checked after an edit.

    `category` names the family the probe belongs to (e.g. "neighborhood", "pre_neighbor",
    "unrelated_attribute", "subject_replace", "one_hop"), so reports can break results down.
    """

    prompt: str
    answer: str
    category: str = "default"

    def __post_init__(self):
        owner = type(self).__name__
        _require_text(self.prompt, "prompt", owner)
        _require_text(self.answer, "answer", owner)
        _require_text(self.category, "category", owner)


@dataclass(frozen=True)
class LocalityProbe(Probe):
    """Out-of-scope input: the edited model should answer it as the unedited model did."""

    category: str = "neighborhood"


@dataclass(frozen=True)
class PortabilityProbe(Probe):
    """A consequence of the edit: the edited model should answer `answer`."""

    category: str = "portability"


@dataclass(frozen=True)
class EditRequest:
    """Change the model's continuation of `prompt` to `target_new`.

    `subject` is the entity the fact is about (needed by editors that localise it);
    `target_true` the answer before the edit (used by probability-margin metrics);
    `rephrase_prompts` in-scope paraphrases (generality); `locality` and `portability` probes.
    """

    prompt: str
    target_new: str
    subject: Optional[str] = None
    target_true: Optional[str] = None
    rephrase_prompts: Tuple[str, ...] = ()
    locality: Tuple[LocalityProbe, ...] = ()
    portability: Tuple[PortabilityProbe, ...] = ()
    case_id: Optional[str] = None
    metadata: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        _require_text(self.prompt, "prompt", "EditRequest")
        _require_text(self.target_new, "target_new", "EditRequest")
        if self.subject is not None:
            _require_text(self.subject, "subject", "EditRequest")
            if self.subject not in self.prompt:
                raise ValueError(
                    f"EditRequest.subject {self.subject!r} does not occur in its prompt {self.prompt!r}"
                )
        if self.target_true is not None:
            _require_text(self.target_true, "target_true", "EditRequest")
        # Accept lists for convenience but store tuples, so requests stay hashable and immutable.
        if isinstance(self.rephrase_prompts, str):
            raise ValueError("EditRequest.rephrase_prompts must be a sequence of strings, not one string")
        object.__setattr__(self, "rephrase_prompts", tuple(self.rephrase_prompts))
        for i, text in enumerate(self.rephrase_prompts):
            _require_text(text, f"rephrase_prompts[{i}]", "EditRequest")
        object.__setattr__(self, "locality", tuple(_as_probe(p, LocalityProbe, "locality", i)
                                                    for i, p in enumerate(self.locality)))
        object.__setattr__(self, "portability", tuple(_as_probe(p, PortabilityProbe, "portability", i)
                                                       for i, p in enumerate(self.portability)))

    def to_dict(self) -> dict:
        """A JSON-ready view (used by reports and by SERAC's memory files)."""
        return {
            "case_id": self.case_id,
            "prompt": self.prompt,
            "target_new": self.target_new,
            "subject": self.subject,
            "target_true": self.target_true,
            "rephrase_prompts": list(self.rephrase_prompts),
            "locality": [vars(p) | {} for p in self.locality],
            "portability": [vars(p) | {} for p in self.portability],
        }

    @classmethod
    def from_dict(cls, record: dict) -> "EditRequest":
        return cls(
            prompt=record["prompt"],
            target_new=record["target_new"],
            subject=record.get("subject"),
            target_true=record.get("target_true"),
            rephrase_prompts=tuple(record.get("rephrase_prompts", ())),
            locality=tuple(LocalityProbe(**p) for p in record.get("locality", ())),
            portability=tuple(PortabilityProbe(**p) for p in record.get("portability", ())),
            case_id=record.get("case_id"),
        )


def _as_probe(value, kind, field_name: str, index: int):
    if isinstance(value, kind):
        return value
    if isinstance(value, Probe):
        return kind(value.prompt, value.answer, value.category)
    if isinstance(value, dict):
        return kind(**value)
    if isinstance(value, (tuple, list)) and len(value) in (2, 3):
        return kind(*value)
    raise ValueError(
        f"EditRequest.{field_name}[{index}] must be a {kind.__name__}, a dict or a "
        f"(prompt, answer[, category]) tuple, got {type(value).__name__}"
    )


def as_request_list(requests: Union["EditRequest", Iterable["EditRequest"]], caller: str = "edit()"
                    ) -> List["EditRequest"]:
    """``requests`` as a non-empty list of EditRequests (one request is a list of one).

    ``caller`` names the function in the error (e.g. ``"evaluate()"``), so a user sees which
    call got the bad input.
    """
    if isinstance(requests, EditRequest):
        return [requests]
    requests = list(requests)
    if not requests:
        raise ValueError(f"{caller} needs at least one EditRequest")
    for i, request in enumerate(requests):
        if not isinstance(request, EditRequest):
            raise ValueError(f"requests[{i}] is a {type(request).__name__}, not an EditRequest")
    return requests

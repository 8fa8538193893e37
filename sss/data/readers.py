"""``load_requests``: any of the field's dataset files (or hub datasets) -> ``EditRequest``s.

A source is a local JSON list or JSONL file, a folder or name that ``datasets.load_dataset``
accepts, a ``datasets.Dataset``, or a list of dicts. The format (``FORMATS``) is given or
detected from the keys of the first record; every record must then carry that format's keys.
The formats themselves live in ``sss.data.formats``, one module each.
"""
from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

from .formats import DETECTION_ORDER, FORMATS, REGISTRY, ReadStats
from .formats.base import missing_keys
from .requests import EditRequest

logger = logging.getLogger(__name__)

Source = Union[str, os.PathLike, Sequence[Mapping[str, Any]], Any]


class RequestList(list):
    """A plain list of ``EditRequest``s that also carries ``stats``, the ``ReadStats`` of its read."""

    def __init__(self, requests=(), stats: Optional[ReadStats] = None):
        super().__init__(requests)
        self.stats = stats


def parse_source(text: str) -> Tuple[str, Optional[str]]:
    """Split ``"PATH:format"`` (the CLI's ``--data``) into ``(PATH, format)``.

    Only a known format after the last colon is split off, so Windows drive letters and hub ids
    pass through: ``"C:\\data\\cf.json"`` -> ``("C:\\data\\cf.json", None)``. A suffix that is
    not a format, after a path that exists, is an error naming the known formats.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"a data source must be a non-empty string, got {text!r}")
    head, sep, tail = text.rpartition(":")
    if sep and tail in FORMATS:
        return head, tail
    if sep and head and not os.path.exists(text) and os.path.exists(head) and not any(c in tail for c in "/\\"):
        raise ValueError(f"unknown format {tail!r} in {text!r}; known formats: {', '.join(FORMATS)}")
    return text, None


def detect_format(record: Mapping[str, Any], index: int = 0) -> str:
    """The first format (most specific first) whose required keys ``record`` carries.

    When none matches, the error names, for each format, the keys the record lacks.
    """
    if not isinstance(record, Mapping):
        raise ValueError(f"record {index} is a {type(record).__name__}, not a JSON object")
    lacking = {}
    for name in DETECTION_ORDER:
        missing = missing_keys(record, REGISTRY[name].required)
        if not missing:
            return name
        lacking[name] = missing
    detail = "; ".join(f"{name} lacks {', '.join(keys)}"
                       for name, keys in sorted(lacking.items(), key=lambda item: len(item[1])))
    raise ValueError(f"record {index} matches no known format ({detail}); its keys are "
                     f"{', '.join(sorted(map(str, record))) or 'none'}")


def load_requests(source: Source, format: Optional[str] = None, *, limit: Optional[int] = None,
                  seed: int = 0, split: Optional[str] = None,
                  dataset_kwargs: Optional[Mapping[str, Any]] = None) -> RequestList:
    """Read edit requests, with every probe each record carries or allows to derive.

    Args:
        source: a local ``.json`` (a list) or ``.jsonl`` file, optionally suffixed ``":format"``;
            a folder, hub id or builder name for ``datasets.load_dataset``; a ``datasets.Dataset``;
            or a list of dicts.
        format: one of ``FORMATS``; ``None`` detects it from the first record's keys.
        limit: return a seeded subset of this many requests (all when ``None`` or larger than
            the source). The subset keeps the source's order - it is not shuffled - and is
            nested: with one seed, the first 10 chosen are among the first 20 chosen.
        seed: picks the subset.
        split: the ``datasets`` split (for a dataset with one split it may be left out).
        dataset_kwargs: more arguments for ``datasets.load_dataset`` (``data_files``, ``name``,
            ``revision``, ``cache_dir``...).

    Returns:
        A ``RequestList`` (a ``list``) whose ``stats`` say what was read and what was skipped
        (ZsRE records with an empty ``alt``, empty probes, ...).
    """
    if isinstance(source, str):
        source, suffix_format = parse_source(source)
        if suffix_format and format and suffix_format != format:
            raise ValueError(f"format {format!r} contradicts the source's suffix {suffix_format!r}")
        format = format or suffix_format
    if format is not None and format not in REGISTRY:
        raise ValueError(f"unknown format {format!r}; known formats: {', '.join(FORMATS)}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")

    records, name = _read_records(source, split, dataset_kwargs)
    if not records:
        raise ValueError(f"{name} holds no records")
    format = format or detect_format(records[0], 0)
    spec = REGISTRY[format]
    for index, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise ValueError(f"record {index} of {name} is a {type(record).__name__}, not a JSON object")
        missing = missing_keys(record, spec.required)
        if missing:
            raise ValueError(f"record {index} of {name} is not a {format!r} record: it lacks "
                             f"{', '.join(missing)}")

    stats = ReadStats(source=name, format=format, records=len(records))
    requests = [request for request in spec.convert(records, stats) if request is not None]
    requests = _subset(requests, limit, seed)
    stats.requests = len(requests)
    _log(stats)
    return RequestList(requests, stats)


def _subset(requests: List[EditRequest], limit: Optional[int], seed: int) -> List[EditRequest]:
    if limit is None or limit >= len(requests):
        return requests
    order = list(range(len(requests)))
    random.Random(seed).shuffle(order)
    return [requests[i] for i in sorted(order[:limit])]


def _log(stats: ReadStats) -> None:
    logger.info("read %d %s records from %s -> %d requests", stats.records, stats.format, stats.source,
                stats.requests)
    for reason, count in stats.skipped.items():
        logger.warning("skipped %d of %d records of %s: %s", count, stats.records, stats.source, reason)
    for reason, count in stats.skipped_probes.items():
        logger.warning("left out %d probes of %s (%s)", count, stats.source, reason)
    if stats.subjects_dropped:
        logger.warning("%d records of %s name a subject that their prompt lacks; they are kept without one",
                       stats.subjects_dropped, stats.source)


# ----------------------------------------------------------------------------------------------
# Getting the records


def _read_records(source: Source, split: Optional[str], dataset_kwargs) -> Tuple[List[Any], str]:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_file():
            if split is not None or dataset_kwargs:
                raise ValueError(f"split and dataset_kwargs apply to datasets.load_dataset sources; "
                                 f"{path} is a local file")
            return _read_json_file(path), str(path)
        if path.suffix.lower() in (".json", ".jsonl") and not path.exists():
            raise ValueError(f"no such data file: {path}")
        return _load_dataset(str(source), split, dataset_kwargs), str(source)
    if isinstance(source, Mapping):
        raise ValueError("a source must be a path, a dataset name, a datasets.Dataset or a list of records, "
                         "not one record")
    if hasattr(source, "column_names") or isinstance(source, (list, tuple)):  # a datasets.Dataset or records
        return list(source), f"<{type(source).__name__} of {len(source)} records>"
    raise ValueError(f"cannot read records from a {type(source).__name__}")


def _read_json_file(path: Path) -> List[Any]:
    """A JSON list, or JSON Lines (one object per line); anything else is an error."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not a text file (not UTF-8: {error.reason} at byte {error.start})") from None
    stripped = text.lstrip()
    if path.suffix.lower() != ".jsonl" and stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from error
        return data
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is neither a JSON list nor JSON Lines: line {number}: {error}") from error
    return records


def _load_dataset(name: str, split: Optional[str], dataset_kwargs) -> List[Any]:
    import datasets  # heavy; only sources that need it pay for it

    loaded = datasets.load_dataset(name, split=split, **dict(dataset_kwargs or {}))
    if isinstance(loaded, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        if len(loaded) != 1:
            raise ValueError(f"{name} has splits {', '.join(loaded)}; choose one with split=")
        loaded = next(iter(loaded.values()))
    return list(loaded)


def load_data(source: str, *, limit: Optional[int] = None, seed: int = 0, split: Optional[str] = None
              ) -> List[EditRequest]:
    """``"demo"`` for the built-in demo set, else ``PATH[:format]`` read by :func:`load_requests`.

    The one way the command line, the training runs and the benchmarks name a dataset.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be at least 1, got {limit}")
    if source == "demo":
        from .demo import demo_requests

        return demo_requests(limit=limit)
    path, data_format = parse_source(source)
    return load_requests(path, data_format, limit=limit, seed=seed, split=split)

"""The requests a cell evaluates, those a trainable editor learns from, and the check that they
do not overlap (an editor evaluated on what it was trained on would measure memorisation)."""
from __future__ import annotations

import functools
import logging
import random
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from ..data import EditRequest, demo_requests, load_requests

logger = logging.getLogger(__name__)


def _read(source: str, format: Optional[str]) -> Tuple[EditRequest, ...]:
    if source == "demo":
        return _read_once(source, format, None)
    if not Path(source).exists():
        raise ValueError(f"study data file {source} does not exist (set --data-root or $SSS_STUDY_DATA to the "
                         f"folder holding the shared data)")
    stat = Path(source).stat()  # a file changed in place is read again, never served from memory
    return _read_once(source, format, (stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=16)
def _read_once(source: str, format: Optional[str], stamp) -> Tuple[EditRequest, ...]:
    return tuple(demo_requests()) if source == "demo" else tuple(load_requests(source, format))


def select(source: str, format: Optional[str], window: Sequence, count: Optional[int], seed: int = 0
           ) -> List[EditRequest]:
    """Requests ``window[0]:window[1]`` of ``source``, then a seeded subset of ``count`` of them that
    keeps their order and is nested (the first 10 chosen are among the first 20)."""
    start, stop = window
    pool = list(_read(source, format)[start:stop])
    if not pool:
        raise ValueError(f"{source}[{start}:{stop}] holds no requests")
    if count is None or count >= len(pool):
        return pool
    order = list(range(len(pool)))
    random.Random(seed).shuffle(order)
    return [pool[i] for i in sorted(order[:count])]


def eval_requests(study, cell) -> List[EditRequest]:
    data = cell.config["data"]
    spec = study.datasets[data["name"]]
    count = data["requests"]
    if cell.config["mode"] == "sequential":
        count = cell.config["length"]
    return select(spec.resolve(spec.eval, study.data_root), spec.format, data["eval_slice"], count)


def training_requests(study, cell) -> Tuple[List[EditRequest], List[EditRequest]]:
    training = cell.config["training"]
    spec = study.datasets[cell.config["data"]["name"]]
    source = spec.resolve(training["train"], study.data_root)
    train = select(source, None, training["train_slice"], training["train_requests"], seed=training["seed"])
    val = select(source, None, training["val_slice"], training["val_requests"])
    # The whole windows must be disjoint, not only the subsets drawn from them at this scale.
    eval_source = spec.resolve(spec.eval, study.data_root)
    check_disjoint(select(source, None, training["train_slice"], None) + select(source, None, training["val_slice"], None),
                   select(eval_source, spec.format, cell.config["data"]["eval_slice"], None),
                   f"the training data of {cell.label} ({training['train']})", f"its evaluation data ({spec.eval})")
    return train, val


def check_disjoint(first: Sequence[EditRequest], second: Sequence[EditRequest], first_name: str,
                   second_name: str) -> None:
    """Refuse two request sets that share a prompt, or a case id within one format."""
    def keys(requests):
        prompts = {r.prompt for r in requests}
        ids = {(r.metadata.get("format"), r.case_id) for r in requests if r.case_id is not None}
        return prompts, ids

    prompts_a, ids_a = keys(first)
    prompts_b, ids_b = keys(second)
    shared_prompts, shared_ids = prompts_a & prompts_b, ids_a & ids_b
    if shared_prompts or shared_ids:
        example = next(iter(shared_prompts)) if shared_prompts else next(iter(shared_ids))
        raise ValueError(f"{first_name} and {second_name} overlap: {len(shared_prompts)} shared prompt(s) and "
                         f"{len(shared_ids)} shared case id(s), e.g. {example!r}; give them disjoint slices")

"""The evaluation protocols: ``single``, ``batch`` and ``sequential`` editing.

``evaluate(editor, requests, mode=...)`` always runs in two phases:

1. **unedited**: every request's probes are observed on the model as handed in, *before the
   first edit*; these observations are the reference for locality (``agreement``) and the
   ``pre`` numbers. They are computed once (and can be shared between calls through
   ``unedited_cache``, e.g. FT-L with and without SSS on the same model).
2. **edited**, by mode:

   * ``single`` (the paper's default): for each request, edit, measure, restore;
   * ``batch``: ``batch_size`` requests per edit, measure them, restore;
   * ``sequential``: edits of ``batch_size`` requests accumulate; after the last edit all
     requests are measured (``post``); with ``measure_each`` each request is also measured
     right after its own edit (``immediate``); ``checkpoints`` adds the summary over the first
     edits after the n-th edit (a curve of metric vs n in one run). Everything is restored at
     the end, newest edit first.

The measured model is ``editor.model`` (for SERAC a wrapper that routes between the base and
the counterfactual model), used only through ``model(input_ids=, attention_mask=).logits`` and
``model.generate``. Under ``torchrun`` (see :mod:`sss.distributed`) ``single`` and ``batch`` give
each rank its share of the edits and every rank ends with the merged records, identical to a
one-process run up to ordering: each request is measured in its own batches and each edit is
seeded by its position, so nothing depends on which rank ran it.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from .. import distributed
from ..data import EditRequest, as_request_list
from ..data.tokenize import EncodingCache
from ..progress import progress
from .measure import Observation, family_means, observe_many, score
from .results import EvalResults, summarise

logger = logging.getLogger(__name__)

MODES = ("single", "batch", "sequential")


def evaluate(editor, requests: Iterable[EditRequest], mode: str = "single", *, batch_size: Optional[int] = None,
             eval_batch_size: int = 32, generate: bool = True, measure_each: bool = False,
             checkpoints: Sequence[int] = (), seed: int = 0, progress: bool = True,
             unedited_cache: Optional[dict] = None, edits_at_once: int = 1) -> EvalResults:
    """Edit with ``editor`` under ``mode`` and measure every probe of every request.

    ``batch_size``: requests per edit (``single``: 1; ``batch``: required; ``sequential``:
    default 1). ``eval_batch_size``: most rows per forward pass when measuring. ``generate``:
    also compute ``exact_match`` (greedy generation; the slowest metric). ``measure_each`` and
    ``checkpoints`` (numbers of edits) only apply to ``sequential``. ``seed`` seeds each edit
    by its position. ``unedited_cache``: a dict reused across calls on the same unedited model.
    ``edits_at_once`` (``single`` only): let an editor that can (``FTL.edit_each``: FT-L without
    a regularizer) train up to this many of the independent edits together; each is still
    measured and undone on its own, and its weights equal one-at-a-time editing's to float
    rounding. Editors without ``edit_each`` ignore it.
    """
    requests = as_request_list(requests, "evaluate()")
    batch_size = check_mode(mode, batch_size, measure_each, checkpoints)
    if eval_batch_size < 1:
        raise ValueError(f"eval_batch_size must be at least 1, got {eval_batch_size}")
    if not isinstance(edits_at_once, int) or isinstance(edits_at_once, bool) or edits_at_once < 1:
        raise ValueError(f"edits_at_once must be a positive integer, got {edits_at_once!r}")
    if edits_at_once > 1 and mode != "single":
        raise ValueError(f"edits_at_once only applies to mode='single' (its edits are independent), not {mode!r}")
    groups = [list(range(start, min(start + batch_size, len(requests))))
              for start in range(0, len(requests), batch_size)]
    world = distributed.world_size()
    if world > 1 and mode == "sequential":
        raise ValueError("sequential edits depend on each other and cannot be sharded; run mode='sequential' "
                         "in one process")
    numbered = list(enumerate(groups))
    mine = distributed.shard(numbered) if world > 1 else numbered
    run = _Run(editor, requests, eval_batch_size, generate, seed, progress and distributed.is_main(),
               unedited_cache)

    run.observe_unedited([i for _, group in mine for i in group])
    curve: List[dict] = []
    if mode == "sequential":
        curve = run.sequential(groups, measure_each, sorted(set(checkpoints)))
    else:
        run.independent(mine, mode, edits_at_once)
    records = [run.record(i, group_index) for group_index, group in mine for i in group]

    if world > 1:
        records = [r for part in distributed.gather_objects(records, to_all=True) for r in part]
    settings = {"mode": mode, "batch_size": batch_size, "eval_batch_size": eval_batch_size, "generate": generate,
                "measure_each": measure_each, "checkpoints": list(checkpoints), "seed": seed,
                "n_requests": len(requests), "world_size": world, "model": _model_name(editor)}
    if edits_at_once > 1:  # only then: reports of one-at-a-time runs keep their settings as they were
        settings["edits_at_once"] = edits_at_once
    results = EvalResults(mode=mode, records=records, editor=editor.describe(), settings=settings, curve=curve)
    if curve:
        curve.append({"edits": len(groups), "requests": len(requests), "summary": summarise(results.records, ("post",))})
    logger.info("%s, %s mode, %d requests: reliability %s -> %s, locality agreement %s",
                results.label, mode, len(requests), _fmt(results.value("reliability", "token_acc", "pre")),
                _fmt(results.value("reliability", "token_acc")), _fmt(results.value("locality", "agreement")))
    return results


def _fmt(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.3f}"


class _Run:
    """The state of one evaluation: cached unedited observations and the edited ones."""

    def __init__(self, editor, requests, eval_batch_size, generate, seed, progress, unedited_cache):
        self.editor, self.requests = editor, requests
        self.eval_batch_size, self.generate, self.seed, self.progress = eval_batch_size, generate, seed, progress
        self.cache = unedited_cache
        self.encodings = EncodingCache(editor.tokenizer)  # each string tokenized once per evaluate() call
        self.unedited: Dict[int, Observation] = {}
        self.post: Dict[int, Observation] = {}
        self.immediate: Dict[int, Observation] = {}

    def _observe(self, indices: Sequence[int]) -> Dict[int, Observation]:
        """The requests at ``indices`` on the model as it is now, all in one batched pass."""
        observed = observe_many(self.editor.model, self.editor.tokenizer, [self.requests[i] for i in indices],
                                generate=self.generate, batch_size=self.eval_batch_size, cache=self.encodings)
        return dict(zip(indices, observed))

    def _bar(self, items, desc):
        return progress(items, desc=desc, enabled=self.progress, unit="edits")

    def observe_unedited(self, indices: List[int]) -> None:
        """Unedited observations: from ``unedited_cache`` where present, the rest in one batched pass."""
        model_key = id(self.editor.model)
        missing = []
        for i in indices:
            cached = self.cache.get((model_key, self.requests[i])) if self.cache is not None else None
            if cached is None or (self.generate and cached.generations is None):
                missing.append(i)
            else:
                self.unedited[i] = cached
        if missing:
            logger.info("observing the unedited model on %d requests", len(missing))
            self.unedited.update(self._observe(missing))
            if self.cache is not None:
                self.cache.update({(model_key, self.requests[i]): self.unedited[i] for i in missing})

    def _edit(self, group_index: int, group: List[int], session=None):
        with _seeded(self.seed + group_index, self.editor):
            return (session or self.editor).edit([self.requests[i] for i in group])

    def independent(self, groups: List[Tuple[int, List[int]]], mode: str, edits_at_once: int = 1) -> None:
        """``single`` / ``batch``: each edit is measured on its own and undone before the next."""
        if edits_at_once > 1 and hasattr(self.editor, "edit_each"):
            return self._trained_together(groups, edits_at_once)
        for group_index, group in self._bar(groups, f"{mode} edits"):
            handle = self._edit(group_index, group)
            try:
                self.post.update(self._observe(group))
            finally:
                handle.restore()

    def _trained_together(self, groups: List[Tuple[int, List[int]]], at_once: int) -> None:
        """``single`` with the editor's ``edit_each``: trained in groups, measured and undone one by one."""
        # FT-L, the editor with edit_each, is deterministic: the per-edit seeding has nothing to seed.
        edits = self.editor.edit_each([self.requests[group[0]] for _, group in groups], at_once=at_once)
        try:
            for (_, group), handle in zip(self._bar(groups, "single edits"), edits):
                try:
                    self.post.update(self._observe(group))
                finally:
                    handle.restore()
        finally:
            edits.close()  # an interrupted run leaves no edit applied

    def sequential(self, groups: List[List[int]], measure_each: bool, checkpoints: List[int]) -> List[dict]:
        """Edits accumulate; measure after the last (and optionally along the way); restore all."""
        curve = []
        # One edit session: a single undo copy of each touched tensor however many edits stack;
        # leaving the block, normally or by any exception, restores every edit bit for bit.
        with self.editor.session() as session:
            for group_index, group in enumerate(self._bar(groups, "sequential edits")):
                self._edit(group_index, group, session)
                if measure_each:
                    self.immediate.update(self._observe(group))
                n = group_index + 1
                if n in checkpoints and n < len(groups):
                    curve.append(self._checkpoint(groups[:n]))
            self.post.update(self._observe(range(len(self.requests))))
        return curve

    def _checkpoint(self, groups: List[List[int]]) -> dict:
        indices = [i for group in groups for i in group]
        records, observed = [], self._observe(indices)
        for i in indices:
            values = score(observed[i], self.unedited[i])
            records.append({"post": family_means(self.unedited[i].probes, values)})
        return {"edits": len(groups), "requests": len(indices), "summary": summarise(records, ("post",))}

    def record(self, index: int, group_index: int) -> dict:
        request, unedited = self.requests[index], self.unedited[index]
        phases = {"pre": score(unedited)}
        if index in self.post:
            phases["post"] = score(self.post[index], unedited)
        if index in self.immediate:
            phases["immediate"] = score(self.immediate[index], unedited)
        probes = []
        for p, probe in enumerate(unedited.probes):
            entry = probe.to_dict()
            entry.update({phase: values[p] for phase, values in phases.items()})
            for phase, observed in (("pre", unedited), ("post", self.post.get(index)),
                                    ("immediate", self.immediate.get(index))):
                if observed is not None and observed.generations is not None:
                    entry[f"{phase}_generation"] = observed.generations[p]
            probes.append(entry)
        record = {"index": index, "case_id": request.case_id, "edit": group_index, "prompt": request.prompt,
                  "subject": request.subject, "target_new": request.target_new, "target_true": request.target_true,
                  "probes": probes}
        record.update({phase: family_means(unedited.probes, values) for phase, values in phases.items()})
        return record


@contextlib.contextmanager
def _seeded(seed: int, editor):
    """Seed one edit by its position without disturbing the caller's random state."""
    device = editor.device if hasattr(editor, "device") else torch.device("cpu")
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield


def check_mode(mode, batch_size, measure_each, checkpoints) -> int:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if mode == "single" and batch_size not in (None, 1):
        raise ValueError(f"mode 'single' edits one request at a time; use mode='batch' for batch_size={batch_size}")
    if mode == "batch" and batch_size is None:
        raise ValueError("mode 'batch' needs batch_size (requests per edit)")
    if mode != "sequential" and (measure_each or checkpoints):
        raise ValueError("measure_each and checkpoints only apply to mode='sequential'")
    for n in checkpoints:
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"checkpoints are numbers of edits (positive integers), got {n!r}")
    return batch_size or 1


def _model_name(editor) -> Optional[str]:
    config = getattr(editor.model, "config", None)
    return getattr(config, "name_or_path", None) or getattr(config, "_name_or_path", None) or None

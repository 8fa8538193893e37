"""Running a study's cells, skipping finished ones and resuming interrupted ones.

Output layout (``out``)::

    <out>/<study>/<label>-<hash>/   one cell: records.jsonl (appended as requests finish),
                                    report.json (sss.eval.report.write_json format), cell.json,
                                    identity.json (what <hash> covers: sss.study.identity), done
    <out>/checkpoints/...           trained MEND/SERAC, shared by every study (checkpoints.py)
    <out>/unedited/...              unedited observations, one file per (model, requests, settings)

``single`` cells run one request at a time through :func:`sss.eval.evaluate`, seeded by the
request's position in the cell (as one ``evaluate`` call over all of them would), so a cell
resumed after k requests ends with exactly the records of an uninterrupted run. ``sequential``
cells depend on every earlier edit: an interrupted one restarts from its first edit. There is
one sequential cell per n of the scale's ``sizes`` (so every n has per-request records for its
confidence intervals; the cell's ``checkpoints=`` curve adds the smaller n as summaries).

Several processes may share ``out`` (one per core): a cell is locked while one runs it, and the
others skip it; a checkpoint being trained is waited for (checkpoints.py).
"""
from __future__ import annotations

import fnmatch
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import torch

from ..editors import FTL, editor_class
from ..eval import MEASUREMENT_VERSION, EvalResults, evaluate, observe_many
from ..eval.report import write_json
from ..files import FolderBusy, folder_lock, write_json_atomic, write_text_atomic
from ..losses import SSSRegularizer
from ..models import load_model
from ..progress import counter, progress as show_progress
from .checkpoints import trained_editor
from .identity import IDENTITY_FILE, cell_identity, hashed_config, request_id
from .requests import eval_requests
from .spec import EDITED_BLOCK, Cell, Study, config_hash, slug
from .store import RecordLog, UneditedCache, is_done, mark_done

logger = logging.getLogger(__name__)
REPORT = "report.json"
CELL_LOCK = ".sss-cell.lock"  # held while a process runs the cell (see run_cell)


@dataclass
class CellStatus:
    cell: Cell = field(repr=False)
    folder: Path
    done: bool
    records: int  # requests already in records.jsonl


def cell_folder(out: Path, cell: Cell) -> Path:
    return Path(out) / cell.study.name / cell.folder_name


def select_cells(study: Study, only: Optional[str]) -> List[Cell]:
    """Cells whose label matches ``only`` (a glob when it has * ? [, else a substring)."""
    if not only:
        return list(study.cells)
    glob = any(c in only for c in "*?[")
    chosen = [c for c in study.cells if (fnmatch.fnmatch(c.label, only) if glob else only in c.label)]
    if not chosen:
        raise ValueError(f"no cell of study {study.name!r} matches {only!r}; its cells are "
                         f"{', '.join(c.label for c in study.cells)}")
    return chosen


def study_status(study: Study, out, only: Optional[str] = None) -> List[CellStatus]:
    statuses = []
    for cell in select_cells(study, only):
        folder = cell_folder(out, cell)
        statuses.append(CellStatus(cell, folder, is_done(folder), len(RecordLog(folder).read())
                                   if (folder / "records.jsonl").exists() else 0))
    return statuses


def run_study(study: Study, out, *, only: Optional[str] = None, progress: bool = True) -> List[CellStatus]:
    """Run every unfinished cell of ``study`` (those matching ``only``) into ``out``; return the statuses."""
    out = Path(out)
    cells = select_cells(study, only)
    todo = [c for c in cells if not is_done(cell_folder(out, c))]
    logger.info("study %s (%s scale): %d cells, %d done, %d to run, writing %s", study.name, study.scale,
                len(cells), len(cells) - len(todo), len(todo), out / study.name)
    models: Dict[tuple, tuple] = {}
    started = time.perf_counter()
    # Off a terminal the line logged below, per finished cell, says it: no second one from the bar.
    bar = show_progress(todo, desc=f"{study.name} cells", enabled=progress, inner=True, unit="cell")
    for k, cell in enumerate(bar):
        bar.set_postfix_str(cell.label)
        key = (cell.config["model"], study.settings["device"])
        if key not in models:
            models.clear()  # one model in memory at a time
            models[key] = load_model(key[0], device=torch.device(key[1]))
        try:
            run_cell(study, cell, out, *models[key], progress=progress)
        except FolderBusy:
            logger.warning("cell %s is being run by another process; skipping it here", cell.label)
            continue
        elapsed = time.perf_counter() - started
        logger.info("cell %d/%d %s done; %.0f s so far, about %.0f s left", k + 1, len(todo), cell.label, elapsed,
                    elapsed / (k + 1) * (len(todo) - k - 1))
    return study_status(study, out, only)


def resolve_target(target, model, tokenizer, options: dict):
    """A study's SSS target: ``edited_block`` is the block FT-L edits on this model (its input)."""
    if target == EDITED_BLOCK:
        return FTL(model, tokenizer, progress=False, **options.get("ft-l", {})).config.layers[0]
    return int(target) if str(target).isdigit() else target


def build_regularizer(settings: Optional[dict], model, tokenizer, options: dict):
    if settings is None:
        return None
    return SSSRegularizer(C=settings["C"], target=resolve_target(settings["target"], model, tokenizer, options),
                          tokens=settings["tokens"], reduction=settings["reduction"])


def build_editor(study: Study, cell: Cell, model, tokenizer, out: Path, progress: bool):
    regularizer = build_regularizer(cell.regularizer, model, tokenizer, study.settings["editors"])
    if editor_class(cell.editor).is_trainable():
        return trained_editor(study, cell, model, tokenizer, regularizer, out, progress=progress)
    return editor_class(cell.editor)(model, tokenizer, regularizer=regularizer, progress=False,
                                     **cell.config["editor_options"])


def unedited_observations(study: Study, cell: Cell, requests, model, tokenizer, out: Path) -> dict:
    """``evaluate``'s ``unedited_cache`` for this cell, filled from (and saved to) the disk cache.

    The unedited observations are those of the base model, before any edit (for SERAC too, whose
    wrapper with an empty memory answers as the base model does)."""
    keys = [config_hash(r.to_dict()) for r in requests]
    disk = UneditedCache(unedited_cache_path(study, cell, out, keys))
    stored = disk.load()
    missing = [i for i, key in enumerate(keys) if key not in stored]
    if missing:  # one length-bucketed pass over every request not yet on disk
        fresh = observe_many(model, tokenizer, [requests[i] for i in missing], generate=cell.config["generate"],
                             batch_size=cell.config["eval_batch_size"])
        stored.update(zip([keys[i] for i in missing], fresh))
    if missing:
        disk.save(stored)
        stored = disk.load()  # use the stored form, exactly what a later run reads
    return {key: stored[key] for key in keys}


def unedited_cache_path(study: Study, cell: Cell, out: Path, keys: List[str], legacy: bool = False) -> Path:
    """The cache file of these requests' unedited observations on the cell's model (``legacy``: its
    name before the weights and the measurement's version were part of it)."""
    settings = {"model": cell.config["model"], "requests": keys, "generate": cell.config["generate"],
                "eval_batch_size": cell.config["eval_batch_size"]}
    if not legacy:
        settings |= {"weights": cell_identity(study, cell)["model"], "measurement": MEASUREMENT_VERSION}
    return Path(out) / "unedited" / (slug(f"{cell.config['model']}-{cell.config['data']['name']}")
                                     + f"-{config_hash(settings)}.json")


def sss_scores(study: Study, cell: Cell, model, tokenizer, request) -> Dict[str, float]:
    """The pre-edit SSS score of the request's edit sentence under each reading the grid asks for."""
    options = study.settings["editors"]
    return {str(target): SSSRegularizer(target=resolve_target(target, model, tokenizer, options))
            .score(model, tokenizer, request.prompt, request.target_new) for target in cell.config["score_sss"]}


def run_cell(study: Study, cell: Cell, out, model, tokenizer, *, progress: bool = True) -> Path:
    """Run (or finish) one cell and return its folder; a finished cell is left as it is."""
    out = Path(out)
    folder = cell_folder(out, cell)
    if is_done(folder):
        return folder
    # Two processes appending to one records.jsonl would interleave duplicate requests: the
    # second one to arrive is refused (FolderBusy) and run_study moves on to the next cell.
    with folder_lock(folder, CELL_LOCK, wait=False):
        if not is_done(folder):  # another process may have finished it before we locked
            _run_locked_cell(study, cell, out, folder, model, tokenizer, progress)
    return folder


def _run_locked_cell(study: Study, cell: Cell, out: Path, folder: Path, model, tokenizer, progress: bool) -> None:
    write_text_atomic(folder / "cell.json", json.dumps({"label": cell.label, "study": study.name,
                                                        "scale": study.scale, "config": cell.config}, indent=2))
    identity = {"identity": cell_identity(study, cell), "config": hashed_config(cell.config)}
    write_json_atomic(folder / IDENTITY_FILE, identity)
    requests = eval_requests(study, cell)
    editor = build_editor(study, cell, model, tokenizer, out, progress)
    observed = unedited_observations(study, cell, requests, model, tokenizer, out)
    cache = {(id(editor.model), r): observed[key] for r, key in zip(requests, observed)}
    log = RecordLog(folder)
    c = cell.config
    options = dict(generate=c["generate"], eval_batch_size=c["eval_batch_size"], progress=False, unedited_cache=cache)
    curve: list = []
    if c["mode"] == "sequential":
        log.reset()  # an interrupted sequence restarts from its first edit
        scores = [sss_scores(study, cell, model, tokenizer, r) for r in requests]
        results = evaluate(editor, requests, "sequential", checkpoints=c["checkpoints"], seed=c["seed"], **options)
        for record, score, request in zip(results.records, scores, requests):
            log.append(_with_scores(dict(record, request_id=request_id(request)), score))
        curve, settings = results.curve, results.settings
    else:
        finished = {record["index"] for record in log.read_requests(len(requests))}
        bar = counter(total=len(requests), desc=cell.label, enabled=progress, leave=False, unit="req",
                      initial=len(finished))
        for i in (i for i in range(len(requests)) if i not in finished):
            score = sss_scores(study, cell, model, tokenizer, requests[i])
            # Seeded by the request's position, as evaluate() over the whole list would seed it.
            results = evaluate(editor, [requests[i]], "single", seed=c["seed"] + i, **options)
            record = dict(results.records[0], index=i, edit=i, request_id=request_id(requests[i]))
            log.append(_with_scores(record, score))
            bar.update(1)
        bar.close()
        settings = _single_settings(c, len(requests))
    records = log.read() if c["mode"] == "sequential" else log.read_requests(len(requests))
    if len(records) != len(requests):
        raise RuntimeError(f"cell {cell.label} has {len(records)} records for {len(requests)} requests")
    results = EvalResults(mode=c["mode"], records=records, editor=editor.describe(), settings=settings, curve=curve)
    write_json(results, folder / REPORT, model=c["model"], data=c["data"]["eval"],
               extra={"cell": cell.label, "study": study.name, "config": c})
    mark_done(folder, {"label": cell.label, "requests": len(records), **identity})


def _with_scores(record: dict, scores: Dict[str, float]) -> dict:
    return dict(record, sss_score=scores) if scores else record


def _single_settings(config: dict, n_requests: int) -> dict:
    """What one evaluate() call over all the cell's requests would report as its settings."""
    return {"mode": "single", "batch_size": 1, "eval_batch_size": config["eval_batch_size"],
            "generate": config["generate"], "measure_each": False, "checkpoints": [], "seed": config["seed"],
            "n_requests": n_requests, "world_size": 1, "model": config["model"]}


def load_cell_results(folder: Path) -> EvalResults:
    from ..eval.report import load_json

    return load_json(Path(folder) / REPORT)

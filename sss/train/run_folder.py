"""A training run's folder on a rerun: resume from ``latest/``, start afresh, or stop and say why.

The rule is that a rerun never loses work silently:

* ``latest/`` present: it must verify (manifest, every file the loop needs) and the run resumes
  from it; a missing or damaged part stops the run with a ``ValueError`` that names the file and
  says how to recover. Nothing in the folder is changed.
* ``latest/`` absent although ``progress.json`` (written after every ``latest/``) says one was
  written: it was deleted or lost, and the run stops the same way.
* no ``latest/`` was ever written (the earlier run stopped before its first checkpoint), or
  ``resume=False``: the run starts at step 0, and whatever an earlier run left (its log,
  ``best/``, ``latest/``) is *moved* to ``previous-N/`` beside them, never deleted.

Recovery is therefore always: rerun with ``resume=False`` (``sss train --no-resume``), which
keeps the earlier files under ``previous-N/``, or put back a good copy of the damaged folder.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import List, Optional

from ..files import read_json, read_jsonl, write_json_atomic, write_text_atomic
from .checkpoint import (LOG_FILE, TRAINABLE_KEY, config_differences, existing_checkpoint, json_default,
                         verify_checkpoint)

logger = logging.getLogger("sss.train")

PROGRESS_FILE = "progress.json"
PROGRESS_FORMAT = "sss-train-progress/1"
LOOP_FILE = "loop.json"
# What latest/ needs besides weights and config to resume exactly.
RESUME_FILES = (LOOP_FILE, "optimizer.safetensors", "optimizer.json", "rng.safetensors")


def recovery_hint(out: Path) -> str:
    return (f"Nothing was changed. To recover, either rerun with --no-resume (TrainConfig(resume=False)), which "
            f"starts again from step 0 and moves the earlier log and checkpoints to {out}/previous-N/ (nothing is "
            f"deleted), or put back a good copy of the damaged folder.")


def earlier_files(out: Path) -> List[Path]:
    """What an earlier run left in ``out`` (log, checkpoints, progress marker)."""
    names = (LOG_FILE, PROGRESS_FILE, "best", "latest", "best.old", "latest.old")
    return [out / name for name in names if (out / name).exists()]


def recorded_latest_step(out: Path) -> Optional[int]:
    """The step of the last ``latest/`` that ``progress.json`` records (None: none was written)."""
    path = out / PROGRESS_FILE
    if not path.exists():
        return None
    progress = read_json(path)
    if not isinstance(progress, dict) or progress.get("format") != PROGRESS_FORMAT:
        raise ValueError(f"{path} is not an sss training progress file ({PROGRESS_FORMAT}). {recovery_hint(out)}")
    return progress.get("latest_step")


def record_latest(out: Path, step: int) -> None:
    """Note that ``latest/`` now holds ``step`` (after it was renamed into place)."""
    write_json_atomic(out / PROGRESS_FILE, {"format": PROGRESS_FORMAT, "latest_step": step})


def checkpoint_to_resume(out: Path, resume: bool = True) -> Optional[Path]:
    """The verified ``latest/`` folder a run in ``out`` resumes from; None: it starts at step 0.

    Reads and hashes, changes nothing (safe on every rank, and for the command line to call
    before it loads a model). Raises ``ValueError`` for a missing or damaged ``latest/``.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"the training output {out} is a file, not a folder")
    if not resume:
        return None
    latest = existing_checkpoint(out / "latest")
    if latest.exists():
        folder = verify_checkpoint(latest, recovery_hint(out))
        missing = [name for name in RESUME_FILES if not (folder / name).is_file()]
        if missing:
            raise ValueError(f"{folder / missing[0]} is missing: {folder} cannot be resumed from. {recovery_hint(out)}")
        return folder
    step = recorded_latest_step(out)
    if step is not None:
        raise ValueError(f"{out / 'latest'} is missing, although {out / PROGRESS_FILE} records a checkpoint at step "
                         f"{step} (was it deleted?). {recovery_hint(out)}")
    return None


def set_aside_earlier_run(out: Path) -> Optional[Path]:
    """Move what an earlier run left in ``out`` to ``out/previous-N/`` (N the first free number)."""
    found = earlier_files(Path(out))
    if not found:
        return None
    number = 1
    while (out / f"previous-{number}").exists():
        number += 1
    target = out / f"previous-{number}"
    target.mkdir()
    for path in found:
        os.rename(path, target / path.name)
    logger.warning("starting %s at step 0; the earlier run's %s moved to %s", out,
                   ", ".join(p.name for p in found), target)
    return target


# TrainConfig fields that may change between a run and its resumption.
RESUMABLE_CHANGES = {"max_steps", "out_dir", "resume", "progress", "patience", "val_every", "restore_best",
                     "log_every", "val_at_start"}


def resume_differences(saved: dict, trainable_config: dict, train_config: dict) -> List[str]:
    """What keeps a run from resuming a checkpoint: one line per setting of the trainable or of the
    loop (those in :data:`RESUMABLE_CHANGES` aside) that differs from what the checkpoint saved."""
    problems = config_differences(saved[TRAINABLE_KEY], json.loads(json.dumps(trainable_config, default=json_default)))
    train_now = {k: v for k, v in train_config.items() if k not in RESUMABLE_CHANGES}
    train_then = {k: v for k, v in saved["train"].items() if k not in RESUMABLE_CHANGES}
    return problems + config_differences(train_then, json.loads(json.dumps(train_now, default=json_default)))


def truncate_log(out: Path, step: int) -> None:
    """Drop the log records after ``step`` (a resumed run logs them again)."""
    path = out / LOG_FILE
    if not path.exists():
        logger.warning("%s is missing: the resumed run logs from step %d on", path, step)
        return
    try:
        records = read_jsonl(path)  # a torn last line (a kill mid-append) is dropped with a warning
    except ValueError as error:
        raise ValueError(f"{error}. The checkpoint itself is fine: move {path} away to resume without the "
                         "earlier log.") from error
    kept = [record for record in records if record.get("step", 0) <= step]
    write_text_atomic(path, "".join(json.dumps(record) + "\n" for record in kept))

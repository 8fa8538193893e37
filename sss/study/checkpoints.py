"""MEND and SERAC checkpoints, trained once per training configuration and shared by every cell.

The key is the hash of the cell's ``training`` configuration (editor, model, its options, the
regularizer, the training seed, the training data's slices and sizes, the loop's settings) and of
the training's identity (the training and validation requests' content, the base weights, the
code's versions: :func:`sss.study.identity.training_identity`), so every experiment that asks
for the same training reuses one folder, and other data or weights never reuse it::

    <out>/checkpoints/<editor>-<regularizer>-s<seed>-<hash>/
        train/      sss.train's out_dir (best/, latest/, train_log.jsonl): an interrupted
                    training resumes from latest/
        editor/     the trained editor (save()), what cells load
        done        written last: the checkpoint is complete

A process that needs a checkpoint another process is training waits for it (a lock in the
folder) and then loads it, instead of training the same thing into the same files.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from ..editors import editor_class
from ..files import folder_lock, write_text_atomic
from ..train import TrainConfig
from ..train.run_folder import recovery_hint
from .identity import training_identity
from .requests import training_requests
from .spec import config_hash, regularizer_label, slug
from .store import is_done, mark_done

logger = logging.getLogger(__name__)
TRAINING_LOCK = ".sss-training.lock"


def checkpoint_folder(out: Path, training: dict, identity: dict) -> Path:
    name = slug(f"{training['editor']}-{regularizer_label(training['regularizer'])}-s{training['seed']}")
    settings = {key: value for key, value in training.items() if key != "train"}  # the path: by content instead
    return Path(out) / "checkpoints" / f"{name}-{config_hash({'training': settings, 'identity': identity})}"


def cell_checkpoint_folder(study, cell, out: Path) -> Path:
    """Where the checkpoint ``cell`` uses is (or will be) trained."""
    train, val = training_requests(study, cell)
    return checkpoint_folder(out, cell.config["training"], training_identity(study, cell, train, val))


def trained_editor(study, cell, model, tokenizer, regularizer, out: Path, *, progress: bool = True):
    """The cell's MEND/SERAC, loaded from the cache (trained into it first when missing)."""
    training = cell.config["training"]
    train, val = training_requests(study, cell)  # checks disjointness even when the checkpoint exists
    identity = training_identity(study, cell, train, val)
    folder = checkpoint_folder(out, training, identity)
    cls = editor_class(training["editor"])
    if not is_done(folder):
        with folder_lock(folder, TRAINING_LOCK, waiting=f"waiting for another process that is training {folder}"):
            if not is_done(folder):  # trained by the process we waited for
                _train(cls, dict(training, identity=identity), train, val, cell, model, tokenizer, regularizer,
                       folder, progress)
    # Always load from disk, so a cell gives the same records whether it trained or reused.
    return cls.from_checkpoint(folder / "editor", model, tokenizer, progress=progress)


def _train(cls, training: dict, train, val, cell, model, tokenizer, regularizer, folder: Path, progress: bool) -> None:
    logger.info("training %s into %s (%d train / %d val requests, %d steps)", cell.editor, folder,
                len(train), len(val), training["loop"]["train_steps"])
    write_text_atomic(folder / "training.json", json.dumps(training, indent=2))
    editor = cls(model, tokenizer, regularizer=regularizer, progress=progress, **training["options"])
    loop = training["loop"]
    config = TrainConfig(max_steps=loop["train_steps"], episodes_per_step=loop["episodes_per_step"],
                         edit_batch_size=loop["edit_batch_size"], val_every=loop["val_every"],
                         val_episodes=loop["val_episodes"], lr=dict(loop["train_lr"]), seed=training["seed"],
                         patience=None, out_dir=str(folder / "train"), resume=True, progress=progress)
    try:
        result = editor.fit(train, val, config)
    except ValueError as error:  # a damaged train/ folder: the hint must be one the study can follow
        hint = recovery_hint(folder / "train")
        if hint not in str(error):
            raise
        raise ValueError(str(error).replace(hint, (
            f"Nothing was changed. To recover, move {folder / 'train'} away (the study then trains this "
            "checkpoint again from step 0), or put back a good copy of the damaged folder."))) from None
    editor.save(folder / "editor")
    mark_done(folder, {"steps": result.steps, "best_step": result.best_step, "best": result.best_metrics})

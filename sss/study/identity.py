"""What a study cell *is*: the content of its data, the model's weights, the code's versions.

A cell's folder is ``<label>-<hash>``, the hash covering its settings (:attr:`Cell.config`, less
the data paths, which are kept in ``cell.json`` for people) and its identity:

* ``data``: a fingerprint of the requests the cell evaluates, as read (and, for a trained editor,
  of its training and validation requests), so another file under the same name, or a file
  edited in place, is another cell;
* ``model``: a fingerprint of the model's weights (:func:`sss.models.fingerprint.model_fingerprint`),
  so a folder whose weights changed is another cell;
* ``code``: the package version, the editor's ``records_version`` and the measurement's
  ``MEASUREMENT_VERSION``: numbers the code bumps when the same inputs would give other records.

A finished cell whose identity is the current one is skipped; any other folder of the same label
is *stale* (:func:`stale_folders` says why) and is never read or resumed.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from ..version import __version__
from ..data import EditRequest
from ..editors import editor_class
from ..eval import MEASUREMENT_VERSION
from ..files import read_json
from ..models.fingerprint import model_fingerprint

__all__ = ["IDENTITY_FILE", "cell_identity", "code_versions", "hashed_config", "request_id",
           "requests_fingerprint", "stale_folders", "training_identity"]

IDENTITY_FILE = "identity.json"


def request_id(request: EditRequest) -> str:
    """A stable id of one request: a hash of its whole content (prompt, targets, probes)."""
    text = json.dumps(request.to_dict(), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def requests_fingerprint(requests: Sequence[EditRequest]) -> str:
    """A fingerprint of an ordered list of requests, by content."""
    digest = hashlib.sha256()
    for request in requests:
        digest.update(request_id(request).encode())
    return f"{len(requests)}:{digest.hexdigest()[:16]}"


def code_versions(editor: str) -> Dict[str, object]:
    return {"sss": __version__, "editor": editor_class(editor).records_version, "measurement": MEASUREMENT_VERSION}


def cell_identity(study, cell) -> dict:
    """The cell's identity (data, model, code); reads the data and fingerprints the model once."""
    cached = getattr(cell, "_identity", None)
    if cached is not None:
        return cached
    from .requests import eval_requests, training_requests

    data = {"eval": requests_fingerprint(eval_requests(study, cell))}
    if "training" in cell.config:
        train, val = training_requests(study, cell)
        data["train"], data["val"] = requests_fingerprint(train), requests_fingerprint(val)
    identity = {"data": data, "model": _model_fingerprint(study, cell.config["model"]),
                "code": code_versions(cell.editor)}
    object.__setattr__(cell, "_identity", identity)
    return identity


def training_identity(study, cell, train, val) -> dict:
    """What decides a trained checkpoint besides its settings: its data, base weights and code."""
    return {"data": {"train": requests_fingerprint(train), "val": requests_fingerprint(val)},
            "model": _model_fingerprint(study, cell.config["model"]), "code": code_versions(cell.editor)}


def _model_fingerprint(study, model: str) -> str:
    memo = study.__dict__.setdefault("_model_fingerprints", {})  # once per model and study load
    if model not in memo:
        memo[model] = model_fingerprint(model)
    return memo[model]


def hashed_config(config: dict) -> dict:
    """The settings that go into a cell's hash: all of ``config`` but the data's file paths (its
    content is in the identity instead, so the same requests read from elsewhere are the same cell)."""
    hashed = json.loads(json.dumps(config))
    hashed["data"].pop("eval", None)
    if "training" in hashed:
        hashed["training"].pop("train", None)
    return hashed


def stale_folders(study, out, cells=None) -> List[Tuple[object, Path, List[str]]]:
    """``(cell, folder, reasons)`` for every folder of a cell's label (of ``cells``, default all)
    that is not its current folder: results of other data, weights, code or settings, never read."""
    from .runner import cell_folder

    stale = []
    for cell in study.cells if cells is None else cells:
        current = cell_folder(out, cell)
        parent = current.parent
        if not parent.is_dir():
            continue
        for folder in sorted(parent.glob(f"{cell.label}-*")):
            if folder == current or not folder.is_dir() or folder.name[len(cell.label) + 1:].count("-"):
                continue  # another cell whose label starts with this one's (its own hash has no "-")
            stale.append((cell, folder, _differences(study, cell, folder)))
    return stale


def _differences(study, cell, folder: Path) -> List[str]:
    path = folder / IDENTITY_FILE
    if not path.is_file():
        return ["recorded before cells had an identity"]
    try:
        recorded = read_json(path)
    except ValueError:
        return ["its identity.json is damaged"]
    current = {"identity": cell_identity(study, cell), "config": hashed_config(cell.config)}
    reasons = []
    for key, reason in (("data", "data changed"), ("model", "weights changed"), ("code", "code changed")):
        if recorded.get("identity", {}).get(key) != current["identity"][key]:
            reasons.append(reason)
    if recorded.get("config") != current["config"]:
        reasons.append("settings changed")
    return reasons or ["an identical cell under another hash"]

"""A study file (TOML, or JSON if it ends in .json) -> a :class:`Study`: its grid of cells at one scale.

A file names a grid (see docs/study.md for every key)::

    name = "table1"
    summary = "table"                      # how sss.study.summary reads the cells
    mode = "single"                        # or "sequential": one cell per n in the scale's `sizes`
    editors = "all"                        # every registered editor, or a list: ["ft-l", "mend"]
    datasets = ["zsre", "counterfact"]     # names in DATASETS, or [data.NAME] tables of the file
    regularizers = ["none", {C = 0.9}]     # list-valued fields expand: {C = [0, 0.5], target = [...]}
    score_sss = ["last_hidden"]            # optional: pre-edit SSS scores stored in every record

    [scales.cpu]                           # overrides of SCALES["cpu"]
    eval_requests = 100
    [scales.cpu.editors.serac]             # editor options at this scale (over the editor's
    cf_layers = 4                          # own study_options for it)

A cell is one (editor, dataset, regularizer, seed) run; its ``config`` holds the settings that
decide its records, and the folder it writes is ``<label>-<hash>`` of those settings and of the
cell's identity (the data's content, the weights, the code's versions: :mod:`sss.study.identity`).
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Union

from ..editors import editor_class, editor_names

from .defaults import DATA_ENV, DATASETS, EDITED_BLOCK, SCALE_NAMES, SCALES, SUMMARIES, TRAINING_DATA
from .settings import check_editor_overrides, check_settings, expand_regularizers


@dataclass(frozen=True)
class DataSpec:
    """Where a dataset's evaluation requests (and, for trainable editors, training ones) come from."""

    name: str
    eval: str
    eval_slice: tuple = (0, None)
    format: Optional[str] = None
    train: str = TRAINING_DATA["train"]
    train_slice: tuple = tuple(TRAINING_DATA["train_slice"])
    val_slice: tuple = tuple(TRAINING_DATA["val_slice"])

    def resolve(self, path: str, root: Path) -> str:
        return path if path == "demo" or os.path.isabs(path) else str(root / path)


@dataclass
class Cell:
    """One run of the grid. ``config`` decides its records; ``label`` is for people."""

    label: str
    config: dict
    study: "Study" = field(repr=False, compare=False)

    @property
    def key(self) -> str:
        """The hash of the cell's settings and identity (data content, weights, code versions)."""
        from .identity import cell_identity, hashed_config

        return config_hash({"config": hashed_config(self.config), "identity": cell_identity(self.study, self)})

    @property
    def folder_name(self) -> str:
        return f"{self.label}-{self.key}"

    @property
    def editor(self) -> str:
        return self.config["editor"]

    @property
    def regularizer(self) -> Optional[dict]:
        return self.config["regularizer"]


@dataclass
class Study:
    name: str
    path: Optional[Path]
    scale: str
    summary: str
    mode: str
    settings: dict  # the merged scale settings
    data_root: Path
    datasets: Dict[str, DataSpec]
    cells: List[Cell] = field(default_factory=list)
    title: str = ""


def config_hash(config: dict, length: int = 10) -> str:
    """A short, stable hash of a JSON-ready configuration (key order does not matter)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=_]+", "-", str(text)).strip("-").lower()


def default_data_root(path: Optional[Path]) -> Path:
    """``$SSS_STUDY_DATA``, else ``../shared/data`` beside the repository holding the study file."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV])
    base = path.resolve().parent if path is not None else Path.cwd()
    repository = base.parent if base.name == "studies" else base
    return repository.parent / "shared" / "data"


def load_study(source: Union[str, os.PathLike, dict], scale: str = "smoke", *, data_root=None,
               model: Optional[str] = None, device: Optional[str] = None) -> Study:
    """Read a study file (or an already parsed dict) and expand its grid at ``scale``.

    ``model``/``device`` override the scale's (e.g. any hub id or folder at ``gpu``);
    ``data_root`` is where relative data paths start (default :func:`default_data_root`).
    """
    path = None
    if isinstance(source, dict):
        raw = copy.deepcopy(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"no such study file: {path}")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"{path} is not a text file (not UTF-8: {error.reason} at byte {error.start})") from None
        if path.suffix.lower() == ".json":
            try:
                raw = json.loads(text)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path} is not valid JSON: {error}") from error
            if not isinstance(raw, dict):
                raise ValueError(f"{path}: a study is a JSON object, not {type(raw).__name__}")
        else:
            try:
                raw = tomllib.loads(text)
            except tomllib.TOMLDecodeError as error:
                raise ValueError(f"{path} is not valid TOML: {error}") from error
    where = str(path) if path else "the study"
    if scale not in SCALE_NAMES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {', '.join(SCALE_NAMES)}")
    known = {"name", "title", "summary", "mode", "editors", "datasets", "regularizers", "score_sss", "data", "scales"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known keys are {sorted(known)}")
    for key in ("name", "editors", "datasets"):
        if key not in raw:
            raise ValueError(f"{where} lacks {key!r}")
    summary, mode = raw.get("summary", "table"), raw.get("mode", "single")
    if summary not in SUMMARIES:
        raise ValueError(f"{where}: unknown summary {summary!r}; choose one of {', '.join(SUMMARIES)}")
    if mode not in ("single", "sequential"):
        raise ValueError(f"{where}: mode must be 'single' or 'sequential', got {mode!r}")
    editors = study_editors(raw["editors"], where)
    defaults = copy.deepcopy(SCALES[scale])
    defaults["editors"] = {name: dict(editor_class(name).study_options.get(scale, {})) for name in editor_names()}
    settings = merge_scale(defaults, raw.get("scales", {}).get(scale, {}), where)
    check_settings(settings, f"{where} [scales.{scale}]")
    if model:
        settings["model"] = model
    if device:
        settings["device"] = device
    root = Path(data_root) if data_root is not None else default_data_root(path)
    datasets = {name: data_spec(name, raw.get("data", {}).get(name), where) for name in raw["datasets"]}
    name = slug(raw["name"])
    if not re.search(r"[a-z0-9]", name):  # "." or "..": cells would land beside or above --out
        raise ValueError(f"{where}: name {raw['name']!r} needs a letter or digit (it names the study's folder)")
    study = Study(name=name, path=path, scale=scale, summary=summary, mode=mode, settings=settings,
                  data_root=root, datasets=datasets, title=raw.get("title", raw["name"]))
    regularizers = expand_regularizers(raw.get("regularizers", ["none"]), where)
    scores = [str(t) for t in raw.get("score_sss", [])]
    lengths = sorted(settings["sizes"]) if mode == "sequential" else [None]
    for editor, dataset, regularizer in itertools.product(editors, raw["datasets"], regularizers):
        seeds = settings["seeds"] if editor_class(editor).is_trainable() else settings["seeds"][:1]
        for seed, length in itertools.product(seeds, lengths):
            study.cells.append(make_cell(study, editor, datasets[dataset], regularizer, seed, scores, length))
    return study


def study_editors(entry, where: str) -> List[str]:
    """A study's ``editors``: ``"all"`` (every registered editor, in registration order) or a list of names."""
    if entry == "all":
        return editor_names()
    if not isinstance(entry, list) or not entry or not all(isinstance(name, str) for name in entry):
        raise ValueError(f"{where}: editors must be \"all\" or a non-empty list of editor names, got {entry!r}")
    unknown = [name for name in entry if name not in editor_names()]
    if unknown:
        raise ValueError(f"{where}: unknown editor(s) {unknown}; registered editors: {', '.join(editor_names())}")
    return list(dict.fromkeys(entry))


def merge_scale(defaults: dict, overrides: dict, where: str) -> dict:
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ValueError(f"{where}: unknown scale setting(s) {unknown}; known are {sorted(defaults)}")
    merged = copy.deepcopy(defaults)
    for key, value in overrides.items():
        if key == "editors":
            for editor, options in value.items():
                check_editor_overrides(editor, options, where)
                merged["editors"].setdefault(editor, {}).update(options)
        else:
            merged[key] = value
    return merged


def data_spec(name: str, table: Optional[dict], where: str) -> DataSpec:
    if table is None and name not in DATASETS:
        raise ValueError(f"{where}: unknown dataset {name!r}; define [data.{name}] or use one of "
                         f"{', '.join(DATASETS)}")
    fields = dict(DATASETS.get(name, {}))
    fields.update(table or {})
    allowed = {"eval", "eval_slice", "format", "train", "train_slice", "val_slice"}
    unknown = sorted(set(fields) - allowed)
    if unknown or "eval" not in fields:
        raise ValueError(f"{where}: [data.{name}] needs 'eval' and takes only {sorted(allowed)}; got {sorted(fields)}")
    for key in ("eval_slice", "train_slice", "val_slice"):
        if key in fields:
            value = fields[key]
            if not (isinstance(value, (list, tuple)) and len(value) == 2 and all(
                    v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in value)):
                raise ValueError(f"{where}: [data.{name}].{key} must be [start, stop] (integers; stop may be "
                                 f"omitted as null), got {value!r}")
            fields[key] = tuple(value)
    for key in ("eval", "train", "format"):
        if key in fields and not isinstance(fields[key], str):
            raise ValueError(f"{where}: [data.{name}].{key} must be text, got {fields[key]!r}")
    return DataSpec(name=name, **fields)


def make_cell(study: Study, editor: str, data: DataSpec, regularizer: Optional[dict], seed: int,
              scores: List[str], length: Optional[int] = None) -> Cell:
    """One cell; a sequential cell edits the first ``length`` requests (one cell per n of ``sizes``,
    so that every n has per-request records; the curve over the smaller n comes along)."""
    s = study.settings
    config = {
        "editor": editor,
        "editor_options": dict(s["editors"].get(editor, {})),
        "model": s["model"],
        "data": {"name": data.name, "eval": data.eval, "eval_slice": list(data.eval_slice), "format": data.format,
                 "requests": s["eval_requests"]},
        "regularizer": regularizer,
        "seed": seed,
        "mode": study.mode,
        "length": length,
        "checkpoints": [n for n in sorted(s["sizes"]) if length is not None and n < length],
        "generate": s["generate"],
        "eval_batch_size": s["eval_batch_size"],
        "score_sss": scores,
    }
    if editor_class(editor).is_trainable():
        config["training"] = training_config(study, editor, data, regularizer, seed)
    parts = [editor, data.name, regularizer_label(regularizer), f"s{seed}"]
    if length is not None:
        parts.append(f"n{length}")
    return Cell(label=slug("-".join(parts)), config=config, study=study)


def training_config(study: Study, editor: str, data: DataSpec, regularizer: Optional[dict], seed: int) -> dict:
    """Everything that decides a trained MEND/SERAC checkpoint (its cache key)."""
    s = study.settings
    return {"editor": editor, "model": s["model"], "options": dict(s["editors"].get(editor, {})),
            "regularizer": regularizer, "seed": seed, "train": data.train, "train_slice": list(data.train_slice),
            "val_slice": list(data.val_slice), "train_requests": s["train_requests"], "val_requests": s["val_requests"],
            "loop": {k: s[k] for k in ("train_steps", "episodes_per_step", "edit_batch_size", "val_every",
                                       "val_episodes", "train_lr")}}


def regularizer_label(regularizer: Optional[dict]) -> str:
    if regularizer is None:
        return "base"
    target = {"last_hidden": "lh", "input_embeds": "ie", EDITED_BLOCK: "eb"}.get(regularizer["target"],
                                                                                f"b{regularizer['target']}")
    extra = "".join(f"-{v}" for k, v in (("tokens", "prompt"), ("reduction", "mean")) if regularizer[k] != v)
    return f"sss{regularizer['C']:g}-{target}{extra}"

"""Which weights a model name stands for, without loading them: the identity of a study cell.

:func:`model_fingerprint` hashes the weight files ``load_model(name)`` would read (a local folder,
the hub cache's snapshot, the converted SmolLM2 folder), so a folder whose weights were replaced
gets another fingerprint while its name stays the same. Hashing a file reads all of it, so each
file's SHA-256 is remembered in ``$SSS_CACHE/file-sha256.json`` by path, size and modification
time: an unchanged model costs a few ``stat`` calls. The seeded tiny models have no files; they
are built (milliseconds) and their tensors hashed.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Dict, List, Optional

from ..files import read_json, sha256_file, weights_fingerprint, write_json_atomic
from .builtin import TINY_MODELS, build_tiny, cache_dir, smollm2_folder

__all__ = ["model_fingerprint", "weight_files"]

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack")
MEMO_FILE = "file-sha256.json"


def model_fingerprint(name: str) -> str:
    """A 16-hex-digit fingerprint of the weights ``load_model(name)`` gives (seed 0)."""
    if name in TINY_MODELS:
        return "tensors:" + weights_fingerprint(build_tiny(name, seed=0)[0])
    folder = _weights_folder(name)
    files = weight_files(folder)
    if not files:
        raise ValueError(f"model {name!r}: no weight files ({', '.join(WEIGHT_SUFFIXES)}) in {folder}")
    digest = hashlib.sha256()
    for path, sha in zip(files, _file_hashes(files)):
        digest.update(f"{path.relative_to(folder)}|{sha}|".encode())
    return "files:" + digest.hexdigest()[:16]


def weight_files(folder: Path) -> List[Path]:
    return sorted(p for p in Path(folder).rglob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file())


def _weights_folder(name: str) -> Path:
    if name == "smollm2-135m":
        return smollm2_folder()
    from .loading import hub_cache_dir, resolve

    source, options = resolve(name)  # the same rules (and errors) as load_model
    if Path(source).is_dir():
        return Path(source)
    snapshot = _cached_snapshot(source, options.get("cache_dir") or hub_cache_dir())
    if snapshot is None:
        raise ValueError(f"model {name!r} is not in the hub cache, so its weights cannot be fingerprinted; "
                         "load it once (load_model) where the hub can be reached")
    return snapshot


def _cached_snapshot(name: str, cache: str) -> Optional[Path]:
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(name, "config.json", cache_dir=cache)
    return Path(config).parent if isinstance(config, str) else None


def _file_hashes(files: List[Path]) -> List[str]:
    """Each file's SHA-256, from the memo while its size and modification time are unchanged; the
    memo is read once and written once (when a file had to be hashed)."""
    memo_path = cache_dir() / MEMO_FILE
    memo: Dict[str, list] = {}
    if memo_path.is_file():
        try:
            loaded = read_json(memo_path)
            memo = loaded if isinstance(loaded, dict) else {}
        except ValueError:  # a damaged memo is only a cache: start a new one
            memo = {}
    hashes, changed = [], False
    for path in files:
        resolved = path.resolve()
        stat = resolved.stat()
        key, stamp = str(resolved), [stat.st_size, stat.st_mtime_ns]
        entry = memo.get(key)
        if not (isinstance(entry, list) and len(entry) == 3 and entry[:2] == stamp):
            memo[key], changed = stamp + [sha256_file(resolved)], True
        hashes.append(memo[key][2])
    if changed:
        try:
            memo_path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(memo_path, memo)
        except OSError:  # a read-only cache folder: hash again next time
            pass
    return hashes

"""Manifests: ``manifest.json``, written last, lists each file of a folder with its size and SHA-256;
:func:`verify_manifest` names the first file that is missing or differs."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

from .atomic import PathLike, write_json_atomic
from .jsonl import read_json

__all__ = ["MANIFEST", "MANIFEST_FORMAT", "sha256_file", "verify_manifest", "write_manifest"]

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "sss-manifest/1"
_CHUNK = 1 << 20


def sha256_file(path: PathLike) -> str:
    """Hex SHA-256 of a file, read in chunks (checkpoints can be larger than memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(folder: PathLike, files: Iterable[str], extra: Optional[Mapping[str, Any]] = None) -> Path:
    """Write ``folder/manifest.json`` listing each of ``files`` (relative names) with size and SHA-256.

    Call it after every listed file is written: a folder whose manifest is missing was not
    finished. ``extra`` (JSON-ready; e.g. a weights fingerprint) is stored under ``"extra"``.
    """
    folder = Path(folder)
    entries = {}
    for name in files:
        path = folder / name
        if not path.is_file():
            raise ValueError(f"cannot list {path} in the manifest: it is not a file")
        entries[str(name)] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    manifest = {"format": MANIFEST_FORMAT, "files": entries, "extra": dict(extra or {})}
    return write_json_atomic(folder / MANIFEST, manifest)


def verify_manifest(folder: PathLike, recover: Optional[str] = None) -> dict:
    """Check every file ``folder/manifest.json`` lists; return the manifest.

    A missing or malformed manifest, or a listed file that is missing, of another size or
    another SHA-256, is a ``ValueError`` naming the file and what differs, followed by
    ``recover`` (how to get a good copy; a generic hint by default).
    """
    folder = Path(folder)
    hint = recover or (f"the folder {folder} is damaged or incomplete; write it again (re-run the save, or "
                       "resume from an earlier checkpoint) or restore it from a backup")
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise ValueError(f"{manifest_path} is missing: the folder was not written completely (the manifest is "
                         f"written last) or not by sss. {hint}")
    manifest = read_json(manifest_path)
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT \
            or not isinstance(manifest.get("files"), dict):
        raise ValueError(f"{manifest_path} is not an sss manifest ({MANIFEST_FORMAT}). {hint}")
    listed = manifest["files"]
    if not listed:
        raise ValueError(f"{manifest_path} lists no files: nothing of the folder is verified. {hint}")
    for name in listed:
        if not isinstance(name, str) or Path(name).is_absolute() or ".." in Path(name).parts:
            raise ValueError(f"{manifest_path} lists {name!r}, a path outside its folder. {hint}")
    unlisted = sorted(p.name for p in folder.glob("*.safetensors") if p.name not in listed)
    if unlisted:  # weights that nothing vouches for would be loaded beside the verified ones
        raise ValueError(f"{folder / unlisted[0]} is not listed in {manifest_path}. {hint}")
    for name, expected in listed.items():
        if not isinstance(expected, dict):
            raise ValueError(f"{manifest_path}: the entry of {name!r} is not a size and SHA-256. {hint}")
        path = folder / name
        if not path.is_file():
            raise ValueError(f"{path} is missing (listed in {manifest_path}). {hint}")
        size = path.stat().st_size
        if size != expected.get("size"):
            raise ValueError(f"{path} has {size} bytes, the manifest says {expected.get('size')} "
                             f"(truncated or replaced). {hint}")
        digest = sha256_file(path)
        if digest != expected.get("sha256"):
            raise ValueError(f"{path} has SHA-256 {digest[:16]}..., the manifest says "
                             f"{str(expected.get('sha256'))[:16]}... (its content changed). {hint}")
    return manifest

"""Files that survive a crash: atomic writes, append-only logs, manifests, weight fingerprints.

Ground level: imports nothing else of sss, so every package may use it.

* Every whole-file write goes to a temporary file beside its target, is flushed and fsynced, and
  then ``os.replace``-d over the target (and the folder fsynced so the rename itself survives a
  power cut). A reader therefore sees the old file or the new one, never half of one; whatever
  is raised during the write (``KeyboardInterrupt`` included) removes the temporary file.
* A JSON Lines log is appended one whole line per record, flushed and fsynced. A kill can only
  tear the *last* line: :func:`read_jsonl` drops it with a warning, and the next
  :func:`append_jsonl` cuts it off before writing, so a log never has damage in the middle
  unless something else wrote there (then reading it is an error naming the line).
* A manifest (``manifest.json``, written last) lists each file of a folder with its size and
  SHA-256; :func:`verify_manifest` names the first file that is missing or differs.
* :func:`weights_fingerprint` names the base weights a delta or checkpoint was made for, so one
  can refuse a model of the same shapes with other weights.
* :func:`folder_lock` keeps two processes out of one folder's work (POSIX ``flock``: the kernel
  drops the lock when its holder dies, so a crash never leaves a stale lock behind).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, List, Mapping, Optional, Union

import torch
from torch import nn

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "sss-manifest/1"
FINGERPRINT_SAMPLE = 4096  # elements hashed per tensor when no names are given (see weights_fingerprint)
_CHUNK = 1 << 20


# ----------------------------------------------------------------------------------------------
# Atomic whole-file writes


def _fsync_folder(folder: Path) -> None:
    # Makes the rename durable; some platforms (Windows) cannot open a folder, which is fine.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_atomic(path: PathLike, write: Callable[[Path], None]) -> Path:
    """Let ``write(temporary_path)`` produce the file, then move it over ``path`` in one step."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    temporary = Path(name)
    try:
        write(temporary)
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        # mkstemp makes the file private (0600); give it the target's mode, or a plain file's.
        mode = target.stat().st_mode & 0o777 if target.exists() else 0o644
        os.chmod(temporary, mode)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    _fsync_folder(target.parent)
    return target


def write_bytes_atomic(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (old content or new, never half)."""
    return _write_atomic(path, lambda temporary: temporary.write_bytes(data))


def write_text_atomic(path: PathLike, text: str, encoding: str = "utf-8") -> Path:
    return write_bytes_atomic(path, text.encode(encoding))


def write_json_atomic(path: PathLike, obj: Any, *, indent: Optional[int] = 2) -> Path:
    """``json.dumps(obj)`` written atomically. Serialised first, so a bad value writes nothing."""
    return write_text_atomic(path, json.dumps(obj, indent=indent) + "\n")


def save_safetensors_atomic(tensors: Mapping[str, torch.Tensor], path: PathLike,
                            metadata: Optional[Mapping[str, str]] = None) -> Path:
    """``safetensors.torch.save_file`` made atomic; tensors are made contiguous and moved to the CPU."""
    from safetensors.torch import save_file

    plain = {name: tensor.detach().contiguous().cpu() for name, tensor in tensors.items()}
    meta = None if metadata is None else {str(k): str(v) for k, v in metadata.items()}
    return _write_atomic(path, lambda temporary: save_file(plain, str(temporary), metadata=meta))


# ----------------------------------------------------------------------------------------------
# Reading JSON and JSON Lines


def read_json(path: PathLike) -> Any:
    """Parse a JSON file; a missing, unreadable or malformed one is a ``ValueError`` naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read {path}: {error}") from error
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg}); "
                         "the file is damaged or was not written by sss") from error


def _cut_torn_tail(handle) -> None:
    """If the file does not end in a newline, its last line was torn by a kill: cut it off."""
    handle.seek(0, os.SEEK_END)
    size = handle.tell()
    if size == 0:
        return
    handle.seek(size - 1)
    if handle.read(1) == b"\n":
        return
    end = size
    while end > 0:
        start = max(0, end - _CHUNK)
        handle.seek(start)
        chunk = handle.read(end - start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            end = start + newline + 1
            break
        end = start
    logger.warning("%s: its last line was torn (an interrupted write); dropping it before appending",
                   handle.name)
    handle.truncate(end)


def append_jsonl(path: PathLike, record: Any, *, ensure_ascii: bool = True) -> None:
    """Append ``record`` as one JSON line, flushed and fsynced: after a kill it is whole or absent.

    ``ensure_ascii=False`` keeps non-ASCII text as UTF-8 rather than ``\\u`` escapes (the study's
    ``records.jsonl`` is written that way); either reads back the same.
    """
    line = (json.dumps(record, ensure_ascii=ensure_ascii) + "\n").encode("utf-8")  # never a raw newline
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        _cut_torn_tail(handle)
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl(path: PathLike) -> List[Any]:
    """The records of a JSON Lines file.

    A damaged *last* line is what a kill during :func:`append_jsonl` leaves: it is dropped with a
    warning naming the file and line. A damaged line anywhere else is a ``ValueError`` naming
    them, since no interrupted append can cause it.
    """
    path = Path(path)
    try:
        lines = path.read_bytes().split(b"\n")
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist") from None
    # What follows the last newline is an append cut short, even where it happens to parse:
    # append_jsonl cuts it off before its next write, so counting it here would lose it later.
    tail = lines.pop()
    if tail.strip():
        logger.warning("%s: line %d is torn (an interrupted write?); dropping it", path, len(lines) + 1)
    numbered = [(number, line) for number, line in enumerate(lines, start=1) if line.strip()]
    records = []
    for position, (number, line) in enumerate(numbered):
        try:
            records.append(json.loads(line.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            if position == len(numbered) - 1:
                logger.warning("%s: line %d is torn (an interrupted write?); dropping it", path, number)
                break
            raise ValueError(f"{path}: line {number} is not valid JSON ({error}); the file is damaged in the "
                             "middle, which an interrupted write cannot cause") from error
    return records


# ----------------------------------------------------------------------------------------------
# Locks


class FolderBusy(RuntimeError):
    """Another process holds the lock that :func:`folder_lock` was asked not to wait for."""


@contextlib.contextmanager
def folder_lock(folder: PathLike, name: str, *, wait: bool = True, waiting: Optional[str] = None):
    """Hold the exclusive lock ``folder/name`` while the block runs.

    Where another process holds it, ``wait=True`` logs ``waiting`` (if given) and waits for it;
    ``wait=False`` raises :class:`FolderBusy` at once. The lock file stays (removing it would let
    a third process lock a new file while the second still holds the old one); it is empty and
    harmless. Where ``fcntl`` is missing (Windows) nothing is locked.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / name, "a") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise FolderBusy(f"{folder} is in use by another process (it holds {folder / name})") from None
            if waiting:
                logger.info("%s", waiting)
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# ----------------------------------------------------------------------------------------------
# Hashes and manifests


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
    for name, expected in manifest["files"].items():
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


# ----------------------------------------------------------------------------------------------
# Fingerprints of base weights


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    # Through uint8 so that dtypes numpy lacks (bfloat16) hash by their exact bit patterns too.
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def weights_fingerprint(weights: Union[nn.Module, Mapping[str, torch.Tensor]],
                        names: Optional[Iterable[str]] = None) -> str:
    """A short stable hash (16 hex digits) of a model's weights, to refuse other base weights.

    With ``names``: the exact bytes, dtype and shape of just those tensors (e.g. the ones a delta
    touches), so a change of one ulp in one element changes the fingerprint. Hashing every
    tensor's bytes in full would cost ~1 s for a 135M model, so without ``names`` every tensor
    contributes its name, dtype, shape and a strided sample of ~``FINGERPRINT_SAMPLE`` elements:
    any two independently trained or initialised models differ, but a change confined to
    unsampled elements goes unseen, which is why callers that edit weights should name them.
    A model gives its ``state_dict()`` (parameters and buffers); device never matters.
    """
    tensors = weights.state_dict() if isinstance(weights, nn.Module) else dict(weights)
    if names is None:
        selected, sample = sorted(tensors), True
    else:
        selected, sample = sorted(set(names)), False
        missing = [name for name in selected if name not in tensors]
        if missing:
            raise ValueError(f"weights_fingerprint: no tensor named {', '.join(missing[:5])}")
    digest = hashlib.sha256()
    for name in selected:
        tensor = tensors[name]
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        if sample and tensor.numel() > FINGERPRINT_SAMPLE:
            tensor = tensor.detach().reshape(-1)[::tensor.numel() // FINGERPRINT_SAMPLE]
        digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()[:16]


def check_fingerprint(saved: Optional[str], current: str, what: str) -> None:
    """Refuse ``what`` (e.g. "the saved edit /x/edit.safetensors") made for other base weights."""
    if saved is not None and saved != current:
        raise ValueError(f"{what} was made for base weights with fingerprint {saved}, but this model's are "
                         f"{current}: load it onto the model it was made from")

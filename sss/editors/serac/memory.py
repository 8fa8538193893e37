"""SERAC's explicit edit memory: the requests applied so far, in order, with cached classifier keys.

Each entry gets an id that is never reused, so an edit's handle can remove exactly the entries
it added even after later edits were added and removed. The memory grows with every edit
(sequential editing keeps all of them; EasyEdit's SERAC keeps only the last).

Files: ``memory.json`` (entries, with each request) and ``memory_keys.safetensors`` (the cached
keys, with a fingerprint of the classifier weights that produced them; keys from another
classifier are recomputed, never trusted).
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch

from ...data import EditRequest
from ...files import read_json, save_safetensors_atomic, sha256_file, write_json_atomic
from .conditioning import edit_text

logger = logging.getLogger(__name__)

MEMORY_FILE = "memory.json"
KEYS_FILE = "memory_keys.safetensors"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class MemoryEntry:
    id: int
    request: EditRequest
    text: str  # what the classifier compares inputs with, and what conditions the counterfactual model


class EditMemory:
    """An ordered, append-mostly store of edits. ``len(memory)`` is the number of entries."""

    def __init__(self):
        self._entries: List[MemoryEntry] = []
        self._next_id = 0
        # Cached classifier keys by entry id, valid for one classifier at one revision.
        self._keys: Dict[int, torch.Tensor] = {}
        self._key_stamp: Optional[Tuple[int, int]] = None
        self._stacked: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self):
        return iter(self._entries)

    @property
    def entries(self) -> List[MemoryEntry]:
        return list(self._entries)

    @property
    def ids(self) -> List[int]:
        return [e.id for e in self._entries]

    @property
    def texts(self) -> List[str]:
        return [e.text for e in self._entries]

    @property
    def requests(self) -> List[EditRequest]:
        return [e.request for e in self._entries]

    def add(self, requests: Iterable[EditRequest]) -> List[int]:
        """Append one entry per request; returns their ids."""
        added = []
        for request in requests:
            if not isinstance(request, EditRequest):
                raise ValueError(f"the memory stores EditRequests, got {type(request).__name__}")
            entry = MemoryEntry(self._next_id, request, edit_text(request))
            self._next_id += 1
            self._entries.append(entry)
            added.append(entry.id)
        self._stacked = None
        return added

    def remove(self, ids: Sequence[int]) -> None:
        """Remove exactly the entries with these ids (all must be present)."""
        wanted = set(ids)
        present = {e.id for e in self._entries}
        missing = sorted(wanted - present)
        if missing:
            raise ValueError(f"the memory holds no entries with ids {missing}")
        self._entries = [e for e in self._entries if e.id not in wanted]
        for entry_id in wanted:
            self._keys.pop(entry_id, None)
        self._stacked = None

    def restorer(self):
        """A function that puts the memory back as it is now (a shallow copy: entries are immutable
        and cached keys are replaced, never changed in place)."""
        saved = {name: (list(value) if isinstance(value, list) else dict(value) if isinstance(value, dict) else value)
                 for name, value in self.__dict__.items()}

        def restore() -> None:
            self.__dict__.update(saved)
        return restore

    def clear(self) -> None:
        self.remove(self.ids)

    # -- classifier keys ---------------------------------------------------------------------------

    def keys_for(self, classifier) -> Optional[torch.Tensor]:
        """The classifier's keys of every entry, [M, D] in entry order (None if it caches none).

        Only entries without a valid cached key are encoded, so an edit of k requests costs k
        encodings however large the memory is.
        """
        stamp = (id(classifier), classifier.revision)
        if stamp != self._key_stamp:
            self._keys, self._stacked, self._key_stamp = {}, None, stamp
        missing = [e for e in self._entries if e.id not in self._keys]
        if missing:
            with torch.no_grad():
                fresh = classifier.keys([e.text for e in missing])
            if fresh is None:
                return None
            for entry, key in zip(missing, fresh):
                self._keys[entry.id] = key.detach()
            self._stacked = None
        if not self._entries:
            return None
        if self._stacked is None:
            self._stacked = torch.stack([self._keys[e.id] for e in self._entries])
        return self._stacked

    # -- files -------------------------------------------------------------------------------------

    def save(self, folder: Union[str, Path], classifier=None) -> Path:
        """Write the entries (and, given the classifier, their keys) into ``folder``.

        Both files are written atomically, ``memory.json`` last: a save that fails (a full disk, a
        kill) leaves the earlier memory whole. The keys are tied to the record by their SHA-256, so
        keys of another save are never read with these entries.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        record = {
            "format_version": FORMAT_VERSION,
            "next_id": self._next_id,
            "entries": [{"id": e.id, "text": e.text, "request": e.request.to_dict()} for e in self._entries],
        }
        keys = self.keys_for(classifier) if classifier is not None and self._entries else None
        if keys is not None:
            record["classifier_fingerprint"] = fingerprint(classifier)
            save_safetensors_atomic({"keys": keys.contiguous().cpu()}, folder / KEYS_FILE)
            record["keys_sha256"] = sha256_file(folder / KEYS_FILE)
        write_json_atomic(folder / MEMORY_FILE, record, indent=1)
        return folder

    @classmethod
    def load(cls, folder: Union[str, Path], classifier=None) -> "EditMemory":
        """Read a saved memory; its keys are reused only if ``classifier`` is the one that made them."""
        folder = Path(folder)
        path = folder / MEMORY_FILE
        if not path.exists():
            raise ValueError(f"{folder} holds no SERAC memory ({MEMORY_FILE} is missing)")
        record = read_json(path)  # a damaged file is an error that names it
        version = record.get("format_version") if isinstance(record, dict) else None
        if version != FORMAT_VERSION:
            raise ValueError(f"{path} has memory format {version!r}; "
                             f"this version of sss reads format {FORMAT_VERSION}")
        memory = cls()
        for item in record["entries"]:
            request = EditRequest.from_dict(item["request"])
            if edit_text(request) != item["text"]:
                raise ValueError(f"entry {item['id']} of {path}: its text does not match its request")
            memory._entries.append(MemoryEntry(int(item["id"]), request, item["text"]))
        memory._next_id = int(record["next_id"])
        keys_path = folder / KEYS_FILE
        if classifier is not None and keys_path.exists() and memory._entries:
            same_save = record.get("keys_sha256") == sha256_file(keys_path)
            if same_save and record.get("classifier_fingerprint") == fingerprint(classifier):
                from safetensors.torch import load_file

                keys = load_file(str(keys_path))["keys"]
                if len(keys) != len(memory):
                    raise ValueError(f"{keys_path} has {len(keys)} keys for {len(memory)} entries")
                device = next(classifier.parameters(), torch.empty(0)).device
                memory._keys = {e.id: k.to(device) for e, k in zip(memory._entries, keys)}
                memory._key_stamp = (id(classifier), classifier.revision)
            else:
                logger.info("the saved memory keys come from another classifier or save; recomputing them")
        return memory


def fingerprint(module: torch.nn.Module) -> str:
    """A hash of a module's parameter names, shapes and values (which weights made these keys)."""
    digest = hashlib.sha256()
    for name, param in module.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(param.shape)).encode())
        digest.update(param.detach().cpu().contiguous().float().numpy().tobytes())
    return digest.hexdigest()[:32]

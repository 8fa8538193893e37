"""Files that survive a crash: atomic writes (:mod:`.atomic`), append-only logs (:mod:`.jsonl`), locks
(:mod:`.locks`), manifests (:mod:`.manifest`), weight fingerprints (:mod:`.fingerprint`).

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
from .atomic import PathLike, save_safetensors_atomic, write_bytes_atomic, write_json_atomic, write_text_atomic
from .fingerprint import FINGERPRINT_SAMPLE, check_fingerprint, weights_fingerprint
from .jsonl import append_jsonl, read_json, read_jsonl
from .locks import FolderBusy, folder_lock
from .manifest import MANIFEST, MANIFEST_FORMAT, sha256_file, verify_manifest, write_manifest

__all__ = ["FINGERPRINT_SAMPLE", "MANIFEST", "MANIFEST_FORMAT", "FolderBusy", "PathLike", "append_jsonl",
           "check_fingerprint", "folder_lock", "read_json", "read_jsonl", "save_safetensors_atomic", "sha256_file",
           "verify_manifest", "weights_fingerprint", "write_bytes_atomic", "write_json_atomic", "write_manifest",
           "write_text_atomic"]

"""The text the key statistics are accumulated over: a corpus, read in a fixed order of chunks.

A corpus is named by a string:

* ``"model-samples"`` (the default): text the model itself samples from its first token with a
  fixed seed. It needs no file and no licence, works offline on any model, and follows the
  model's own distribution of contexts; chunk ``i`` is sampled under seed ``seed + i``, so any
  chunk can be produced again (a resumed run continues exactly where it stopped).
* a ``.txt`` file (one document per blank-line-separated paragraph), a ``.jsonl`` file (its
  ``"text"`` field), or a folder of such files (in name order);
* anything else is handed to ``datasets.load_dataset`` (its ``"text"`` column, split ``train``).

:func:`corpus_id` names a corpus by content (a file's SHA-256) so that a cache of statistics is
keyed by what was read, not by a path.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterator, List

import torch

from ..files import sha256_file

__all__ = ["MODEL_SAMPLES", "corpus_id", "corpus_texts"]

MODEL_SAMPLES = "model-samples"
TEXT_SUFFIXES = (".txt", ".jsonl")


def corpus_id(corpus: str, seed: int) -> str:
    """A stable name of what ``corpus`` holds: its files' content, or the sampling seed."""
    if corpus == MODEL_SAMPLES:
        return f"{MODEL_SAMPLES}-seed{seed}"
    files = _files(corpus)
    if files:
        digest = hashlib.sha256()
        for path in files:
            digest.update(f"{path.name}|{sha256_file(path)}|".encode())
        return f"files-{digest.hexdigest()[:16]}"
    return "datasets-" + hashlib.sha256(corpus.encode()).hexdigest()[:16]


def corpus_texts(corpus: str) -> List[str]:
    """Every document of a file, folder or ``datasets`` corpus, in a fixed order."""
    files = _files(corpus)
    if files:
        texts = [text for path in files for text in _read(path)]
    else:
        texts = _load_dataset(corpus)
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError(f"the corpus {corpus} holds no text")
    return texts


def sampled_chunk(model, tokenizer, index: int, seed: int, batch: int, length: int) -> torch.Tensor:
    """``batch`` sequences of ``length`` tokens sampled by the model (chunk ``index``: seed + index)."""
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    inputs = torch.full((batch, 1), start, dtype=torch.long, device=device)
    generator_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=generator_devices), torch.no_grad():
        torch.manual_seed(seed + index)
        out = model.generate(inputs, attention_mask=torch.ones_like(inputs), do_sample=True, top_k=0, top_p=1.0,
                             max_new_tokens=length - 1, min_new_tokens=length - 1, pad_token_id=start)
    return out


def _files(corpus: str) -> List[Path]:
    path = Path(corpus)
    if path.is_file():
        if path.suffix not in TEXT_SUFFIXES:
            raise ValueError(f"corpus file {path}: expected a .txt or .jsonl file")
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
        if not files:
            raise ValueError(f"the corpus folder {path} holds no .txt or .jsonl file")
        return files
    if corpus.startswith(("/", ".", "~")) or Path(corpus).suffix in TEXT_SUFFIXES:
        raise ValueError(f"corpus {corpus}: no such file or folder")
    return []


def _read(path: Path) -> Iterator[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"corpus file {path} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    if path.suffix == ".txt":
        yield from (paragraph.strip() for paragraph in text.split("\n\n"))
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"corpus file {path}, line {number}: not JSON ({error})") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise ValueError(f"corpus file {path}, line {number}: needs a \"text\" field")
            yield record["text"]


def _load_dataset(corpus: str) -> List[str]:
    try:
        import datasets

        dataset = datasets.load_dataset(corpus, split="train")
    except Exception as error:  # no such dataset, no network: one clear line
        raise ValueError(f"corpus {corpus!r} is not a file or folder, and datasets could not load it "
                         f"({type(error).__name__})") from None
    if "text" not in dataset.column_names:
        raise ValueError(f"the dataset {corpus!r} has no 'text' column (it has {dataset.column_names})")
    return list(dataset["text"])

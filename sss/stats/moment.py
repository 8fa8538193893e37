"""``C = E[k kᵀ]``: the uncentred second moment of the keys ``k`` entering a block's MLP output
projection, over the tokens of a corpus (padding excluded), accumulated in float64.

ROME's rank-one update and MEMIT's batch solve weigh a change of the projection by ``C``, and a
null-space constraint projects onto its small eigenvalues; all of them read it from here.
Computing it is a forward pass over many tokens (hours for a 7B model on one GPU), so it is
cached and resumable:

* **Cache** (``$SSS_CACHE/stats/<model>/<block, corpus, tokens, length>/``): ``moment.safetensors``
  (the sum of ``k kᵀ`` and the token count) and a manifest with each file's SHA-256 and the
  fingerprint of the weights the keys depend on — every tensor below the projection: the
  embeddings, the blocks before it, and the block's own attention, norms and MLP input. Editing the
  projection itself (what ROME and MEMIT do) therefore keeps the cache valid; other weights are
  refused with a message naming both fingerprints.
* **Resume**: the running sum is saved (atomically, under ``partial/``) every
  ``checkpoint_every`` seconds with the number of chunks done; the corpus is read in a fixed order
  of chunks, so a run interrupted at any point and started again gives the same matrix, bit for
  bit, as one that was never interrupted.
"""
from __future__ import annotations

import logging
import re
import shutil
import time
from pathlib import Path
from typing import List, Optional, Tuple

import torch
from torch import nn

from ..data import pad_id, pad_sequences
from ..files import read_json, save_safetensors_atomic, verify_manifest, weights_fingerprint, write_json_atomic, \
    write_manifest
from ..models import cache_dir, layout_of, mlp_out_path, num_blocks
from ..progress import counter
from .corpus import MODEL_SAMPLES, corpus_id, corpus_texts, sampled_chunk

__all__ = ["key_second_moment", "key_weights_fingerprint", "stats_folder"]

logger = logging.getLogger(__name__)
MOMENT_FILE, PARTIAL = "moment.safetensors", "partial"


class _Enough(Exception):
    """Raised by the hook once the keys are taken: the blocks above need not run."""


def key_second_moment(model: nn.Module, tokenizer, block: int, *, corpus: str = MODEL_SAMPLES,
                      tokens: Optional[int] = None, seed: int = 0, batch_size: int = 8, max_length: int = 128,
                      folder: Optional[Path] = None, checkpoint_every: float = 60.0,
                      progress: bool = True) -> torch.Tensor:
    """``E[k kᵀ]`` (float64, ``[d_k, d_k]``) over ``tokens`` corpus tokens (default ``10 * d_k``).

    Read from the cache when it is there (and verified), else computed, resuming a partial run.
    ``folder`` overrides where it is cached (default :func:`stats_folder`).
    """
    block = _check_block(model, block)
    projection = model.get_submodule(mlp_out_path(model, block))
    d_k = _key_width(projection)
    tokens = 10 * d_k if tokens is None else tokens
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 1:
        raise ValueError(f"tokens must be a positive integer, got {tokens!r}")
    if not isinstance(max_length, int) or max_length < 2 or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"max_length must be an integer >= 2 and batch_size >= 1, got {max_length!r}, {batch_size!r}")
    weights = key_weights_fingerprint(model, block)
    folder = Path(folder) if folder is not None else stats_folder(model, block, corpus, tokens, seed, max_length,
                                                                   weights=weights)
    if (folder / "manifest.json").exists():
        return _read_cached(folder, weights)
    total, count = _accumulate(model, tokenizer, block, projection, folder, weights, corpus=corpus, tokens=tokens,
                               seed=seed, batch_size=batch_size, max_length=max_length,
                               checkpoint_every=checkpoint_every, progress=progress)
    save_safetensors_atomic({"sum": total, "count": torch.tensor([count], dtype=torch.int64)}, folder / MOMENT_FILE)
    write_manifest(folder, [MOMENT_FILE], extra={"weights": weights, "block": block, "corpus": corpus,
                                                 "tokens": count, "max_length": max_length, "seed": seed})
    shutil.rmtree(folder / PARTIAL, ignore_errors=True)
    return total / count


def stats_folder(model: nn.Module, block: int, corpus: str, tokens: int, seed: int = 0, max_length: int = 128, *,
                 weights: Optional[str] = None) -> Path:
    """Where the statistics of ``model``'s ``block`` are cached: by the model's name (a model built in
    memory, without one, by its architecture and the fingerprint of the weights the keys depend on,
    ``weights`` when the caller has it already)."""
    config = getattr(model, "config", None)
    name = getattr(config, "name_or_path", "") or \
        f"{getattr(config, 'model_type', 'model')}-{(weights or key_weights_fingerprint(model, block))[:12]}"
    model_slug = re.sub(r"[^A-Za-z0-9._-]+", "-", str(name)).strip("-") or "model"
    return cache_dir() / "stats" / model_slug / f"block{block}-{corpus_id(corpus, seed)}-{tokens}tok-len{max_length}"


def key_weights_fingerprint(model: nn.Module, block: int) -> str:
    """A fingerprint of every tensor the keys of ``block`` depend on (not the projection, nor what
    lies above it), by their exact bytes."""
    layout = layout_of(model)
    prefix = f"{layout.blocks}."
    projection = mlp_out_path(model, block) + "."
    names = []
    for name in model.state_dict():
        if name.startswith(projection):
            continue
        if name.startswith(prefix):
            if int(name[len(prefix):].split(".")[0]) <= block:
                names.append(name)
        elif not name.startswith(("lm_head.", layout.final_norm + ".")):
            names.append(name)  # embeddings (and any other module below the blocks)
    return weights_fingerprint(model, names)


def _check_block(model: nn.Module, block) -> int:
    depth = num_blocks(model)
    if not isinstance(block, int) or isinstance(block, bool) or not -depth <= block < depth:
        raise ValueError(f"block {block!r} is out of range: the model has {depth} blocks (0 to {depth - 1})")
    return block % depth


def _key_width(projection: nn.Module) -> int:
    weight = projection.weight
    return weight.shape[0] if type(projection).__name__ == "Conv1D" else weight.shape[1]


def _read_cached(folder: Path, weights: str) -> torch.Tensor:
    from safetensors.torch import load_file

    manifest = verify_manifest(folder, recover=f"delete {folder} to compute the statistics again")
    saved = manifest.get("extra", {}).get("weights")
    if saved != weights:
        raise ValueError(f"the key statistics in {folder} were computed for other weights (fingerprint {saved}; "
                         f"this model's keys depend on weights with fingerprint {weights}): delete the folder to "
                         "compute them for this model, or load the model they were computed on")
    stored = load_file(str(folder / MOMENT_FILE))
    return stored["sum"] / int(stored["count"][0])


def _accumulate(model, tokenizer, block: int, projection, folder: Path, weights: str, *, corpus, tokens, seed,
                batch_size, max_length, checkpoint_every, progress) -> Tuple[torch.Tensor, int]:
    d_k = _key_width(projection)
    total, count, chunk = _resume(folder, weights, d_k)
    windows = None if corpus == MODEL_SAMPLES else _windows(tokenizer, corpus, max_length)
    if windows is not None and sum(len(w) for w in windows) < tokens:
        raise ValueError(f"the corpus {corpus} holds {sum(len(w) for w in windows)} tokens; ask for at most that many")
    bar = counter(total=tokens, desc=f"key statistics, block {block}", enabled=progress,
                  initial=count, unit="tok")
    saved_at = time.monotonic()
    while count < tokens:
        ids, mask = (_sampled(model, tokenizer, chunk, seed, batch_size, max_length) if windows is None
                     else _padded(windows[chunk * batch_size:(chunk + 1) * batch_size], tokenizer, model))
        keys = _keys(model, projection, ids, mask)[: tokens - count].double()
        total.addmm_(keys.T, keys)
        count += keys.shape[0]
        chunk += 1
        bar.update(keys.shape[0])
        if count < tokens and time.monotonic() - saved_at >= checkpoint_every:
            _save_partial(folder, total, count, chunk, weights)
            saved_at = time.monotonic()
    bar.close()
    return total, count


def _keys(model, projection, ids, mask) -> torch.Tensor:
    """The projection's inputs at the unpadded positions, in row-major order: ``[n, d_k]``."""
    taken: List[torch.Tensor] = []

    def take(module, args):
        taken.append(args[0][mask.bool()].detach())
        raise _Enough

    hook = projection.register_forward_pre_hook(take)
    try:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask, use_cache=False)
    except _Enough:
        pass
    finally:
        hook.remove()
    return taken[0]


def _sampled(model, tokenizer, chunk, seed, batch_size, max_length):
    ids = sampled_chunk(model, tokenizer, chunk, seed, batch_size, max_length)
    return ids, torch.ones_like(ids)


def _windows(tokenizer, corpus: str, max_length: int) -> List[List[int]]:
    """The corpus as token windows of at most ``max_length`` (each document cut into windows)."""
    windows = []
    for text in corpus_texts(corpus):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        windows += [ids[i:i + max_length] for i in range(0, len(ids), max_length)]
    return [w for w in windows if w]


def _padded(windows, tokenizer, model):
    return pad_sequences(windows, pad_id(tokenizer), left=False, device=next(model.parameters()).device)


def _resume(folder: Path, weights: str, d_k: int) -> Tuple[torch.Tensor, int, int]:
    """The running sum, token count and chunks done of an interrupted run (zeros when none)."""
    from safetensors.torch import load_file

    state_path = folder / PARTIAL / "state.json"
    if state_path.is_file():
        state = read_json(state_path)
        if state.get("weights") == weights:
            stored = load_file(str(folder / PARTIAL / "sum.safetensors"))
            if stored["count"].item() == state["count"]:
                logger.info("resuming the key statistics in %s at %d tokens", folder, state["count"])
                return stored["sum"], int(state["count"]), int(state["chunks"])
        logger.warning("the partial key statistics in %s are of other weights or incomplete: starting again", folder)
    return torch.zeros(d_k, d_k, dtype=torch.float64), 0, 0


def _save_partial(folder: Path, total: torch.Tensor, count: int, chunk: int, weights: str) -> None:
    (folder / PARTIAL).mkdir(parents=True, exist_ok=True)
    save_safetensors_atomic({"sum": total, "count": torch.tensor([count])}, folder / PARTIAL / "sum.safetensors")
    write_json_atomic(folder / PARTIAL / "state.json", {"weights": weights, "count": count, "chunks": chunk})

"""Teacher forcing without the LM-head work its results cannot need.

The metrics read the logits only where a target token is predicted; the vocabulary-wide
projection (and log-softmax) dominates small models' forward pass, so a Hugging Face causal LM
is asked for those positions only (``logits_to_keep``), and a rival answer whose tokens are
predicted from the same contexts as the answer's is read from the answer's row.
"""
from __future__ import annotations

import inspect
import sys
from typing import Sequence

import torch

from ..data import PairBatch


def shares_context(target_ids: Sequence[int], alternative_ids: Sequence[int]) -> bool:
    """Whether every token of ``alternative_ids`` is predicted at a position of the pair's row
    whose context is the alternative's own: token j is, when both targets agree on their first
    j tokens (the prompt's last position predicts token 0 of either)."""
    common = next((j for j, (a, b) in enumerate(zip(target_ids, alternative_ids)) if a != b),
                  min(len(target_ids), len(alternative_ids)))
    return 0 < len(alternative_ids) <= min(common + 1, len(target_ids))


def logits_selection(model) -> str:
    """How much of the LM head ``model`` can skip: ``"mask"`` (logits at chosen positions of each
    row: its module slices with transformers' ``slice_logits_to_keep``), ``"tail"`` (the last
    positions only: an integer ``logits_to_keep``) or ``"all"`` (e.g. SERAC's wrapper)."""
    from transformers import PreTrainedModel  # here: importing transformers is slow

    if not isinstance(model, PreTrainedModel) or "logits_to_keep" not in inspect.signature(model.forward).parameters:
        return "all"
    module = sys.modules.get(type(model).__module__)
    return "mask" if getattr(module, "slice_logits_to_keep", None) is not None else "tail"


def predicting_logits(model, batch: PairBatch, selection: str) -> torch.Tensor:
    """Logits at the positions that predict a target token (position t's token is predicted at
    t - 1), ``[target tokens, V]`` in row-major order; the LM head runs on no more than it must."""
    input_ids, attention_mask = batch.input_ids, batch.attention_mask
    predicting = torch.zeros_like(batch.target_mask)
    predicting[:, :-1] = batch.target_mask[:, 1:]
    if selection != "all":
        # A row's last token predicts nothing read here, and under causal attention nothing
        # before it sees it: mask it out like padding and drop the column it alone filled.
        # (Not for wrappers: SERAC routes on the row's whole text.)
        last = batch.prompt_lengths + batch.target_lengths - 1
        attention_mask = attention_mask.clone()
        attention_mask[torch.arange(len(last), device=last.device), last] = 0
        width = int(last.max())
        input_ids, attention_mask, predicting = input_ids[:, :width], attention_mask[:, :width], predicting[:, :width]
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if selection == "mask":
        logits = model(**inputs, logits_to_keep=predicting).logits
        if logits.shape[0] == int(predicting.sum()) and logits.dim() == 2:
            return logits
        raise RuntimeError(f"{type(model).__name__} ignored a boolean logits_to_keep (got {tuple(logits.shape)})")
    # Only positions from the shortest prompt's last token on can predict a target token.
    tail = input_ids.shape[1] - (int(batch.prompt_lengths.min()) - 1)
    if selection == "tail":
        return model(**inputs, logits_to_keep=tail).logits[predicting[:, -tail:]]
    return model(**inputs).logits[predicting]

"""The few columns of a teacher-forced batch that the edit losses read, as a batch of their own.

``target_nll`` reads the logits that predict the target tokens (position t-1 predicts t) and
``prompt_last_nll`` those at the last prompt position; both lie in one window per row, from the
last prompt position to the last target token. Running the vocabulary-wide LM head (and its
log-softmax) on that window instead of on every position gives the same loss for a fraction of
the work; :func:`target_window` says which columns to keep and builds the matching batch.
"""
from __future__ import annotations

from typing import Tuple

import torch

from ...data import PairBatch
from ...data.tokenize import IGNORE_INDEX


def target_window(batch: PairBatch) -> Tuple[torch.Tensor, PairBatch]:
    """``(columns [B, W], narrow batch)``: from each row's last prompt position to its last target token.

    Row b's window starts at ``prompt_length - 1`` and is ``max target length + 1`` wide, so
    ``target_nll`` (logits at t-1 predict the label at t) and ``prompt_last_nll`` (column 0 once
    the prompt length is 1) read from ``logits[rows, columns]`` with the narrow batch exactly
    the predictions they read from full logits with ``batch``. Columns past a row's end are
    clamped to its last column and marked as neither prompt nor target.
    """
    length = batch.input_ids.shape[1]
    offsets = torch.arange(int(batch.target_lengths.max()) + 1, device=batch.input_ids.device)
    positions = batch.last_prompt_positions.unsqueeze(1) + offsets  # [B, W]
    inside = positions < length
    columns = positions.clamp_max(length - 1)

    def window(tensor, fill):
        return torch.where(inside, tensor.gather(1, columns), torch.full_like(columns, fill, dtype=tensor.dtype))

    narrow = PairBatch(
        input_ids=window(batch.input_ids, 0), attention_mask=window(batch.attention_mask, 0),
        labels=window(batch.labels, IGNORE_INDEX), prompt_mask=window(batch.prompt_mask, False),
        target_mask=window(batch.target_mask, False), prompt_lengths=torch.ones_like(batch.prompt_lengths),
        target_lengths=batch.target_lengths)
    return columns, narrow


def at_columns(tensor: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """``tensor[b, columns[b, j]]`` for every row b: ``[B, L, ...]`` -> ``[B, W, ...]``."""
    rows = torch.arange(tensor.shape[0], device=columns.device).unsqueeze(1)
    return tensor[rows, columns]


def target_tail(batch: PairBatch) -> Tuple[int, PairBatch]:
    """``(k, tail)``: the last ``k`` positions hold every target prediction of ``batch``.

    The first target token of the row with the shortest prompt is predicted at its last prompt
    position, so the tail starts there. ``tail`` is ``batch`` cut to those positions (prompt
    lengths counted within the tail); ``target_nll(model(..., logits_to_keep=k).logits, tail)``
    equals ``target_nll(model(...).logits, batch)``.
    """
    length = batch.input_ids.shape[1]
    keep = length - int(batch.prompt_lengths.min()) + 1
    start = length - keep
    cut = {name: getattr(batch, name)[:, start:] for name in
           ("input_ids", "attention_mask", "labels", "prompt_mask", "target_mask")}
    return keep, PairBatch(**cut, prompt_lengths=batch.prompt_lengths - start, target_lengths=batch.target_lengths)

"""How the counterfactual model sees an edit: the edit's text, a separator, then the input.

Training and inference must build exactly the same token sequence, so both go through
:func:`prefix_ids` and :func:`prepend`: the prefix ``edit text + separator`` is tokenized once and
its ids are put in front of the input's ids (not re-tokenized as one string), which also keeps
every input position's logits addressable after the prefix.
"""
from __future__ import annotations

from typing import List, Sequence

import torch

from ...data import EditRequest, PairBatch, continuation


def edit_text(request: EditRequest) -> str:
    """The edit as one sentence: the prompt followed by the new target ("... is Rome")."""
    return request.prompt + continuation(request.target_new)


def prefix_ids(tokenizer, text: str, separator: str) -> List[int]:
    """Token ids of ``text + separator`` (with the tokenizer's special tokens, e.g. a BOS)."""
    ids = tokenizer(text + separator, add_special_tokens=True)["input_ids"]
    if not ids:
        raise ValueError(f"the edit text {text!r} encodes to no tokens")
    return list(ids)


def prepend(batch: PairBatch, prefixes: Sequence[Sequence[int]], pad_id: int) -> PairBatch:
    """A right-padded PairBatch whose row ``b`` is ``prefixes[b]`` followed by ``batch``'s row ``b``.

    The prefix counts as prompt (it is what the model is conditioned on); labels and the target
    mask move with their tokens.
    """
    if len(prefixes) != len(batch):
        raise ValueError(f"got {len(prefixes)} prefixes for a batch of {len(batch)}")
    lengths = batch.attention_mask.sum(-1).tolist()
    width = max(len(p) + n for p, n in zip(prefixes, lengths))
    device = batch.input_ids.device
    rows = len(batch)
    input_ids = torch.full((rows, width), pad_id, dtype=torch.long, device=device)
    attention_mask = torch.zeros((rows, width), dtype=torch.long, device=device)
    labels = torch.full((rows, width), -100, dtype=torch.long, device=device)
    prompt_mask = torch.zeros((rows, width), dtype=torch.bool, device=device)
    target_mask = torch.zeros((rows, width), dtype=torch.bool, device=device)
    for b, (prefix, n) in enumerate(zip(prefixes, lengths)):
        k = len(prefix)
        input_ids[b, :k] = torch.tensor(list(prefix), dtype=torch.long, device=device)
        input_ids[b, k:k + n] = batch.input_ids[b, :n]
        attention_mask[b, :k + n] = 1
        labels[b, k:k + n] = batch.labels[b, :n]
        prompt_mask[b, :k] = True
        prompt_mask[b, k:k + n] = batch.prompt_mask[b, :n]
        target_mask[b, k:k + n] = batch.target_mask[b, :n]
    return PairBatch(input_ids=input_ids, attention_mask=attention_mask, labels=labels, prompt_mask=prompt_mask,
                     target_mask=target_mask, prompt_lengths=batch.prompt_lengths.to(device) + torch.tensor(
                         [len(p) for p in prefixes], device=device),
                     target_lengths=batch.target_lengths.to(device))


def input_columns(prefix_lengths: Sequence[int], width: int, length: int, device) -> torch.Tensor:
    """Columns ``[B, width]`` of prefixed rows (``length`` wide) that hold the inputs' own positions
    0..width-1, clamped to the last column past a row's end (where the input was padding)."""
    prefixes = torch.tensor(list(prefix_lengths), device=device).unsqueeze(1)
    return (prefixes + torch.arange(width, device=device)).clamp_max(length - 1)

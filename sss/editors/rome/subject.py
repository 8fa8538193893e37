"""Where ROME looks a fact up: the subject's last token, in the prompt and under sampled prefixes.

The original formats ``"{}"`` templates; here texts are built by concatenation (a prefix, a space,
the prompt), and the subject's last token is found from the tokenizer's character offsets, so a
subject that tokenizes differently inside a sentence than alone is still found exactly.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch

__all__ = ["in_context", "sampled_prefixes", "subject_last_index"]


def in_context(prefix: str, text: str) -> str:
    return f"{prefix} {text}" if prefix else text


def subject_last_index(tokenizer, text: str, subject: str, start: int = 0) -> int:
    """The position of the subject's last token in ``tokenizer(text)`` (special tokens included),
    for the first occurrence of ``subject`` at or after character ``start``."""
    at = text.find(subject, start)
    if at < 0:
        raise ValueError(f"the subject {subject!r} is not in the prompt {text[start:]!r}: ROME edits where the "
                         "model reads the subject, so the prompt must contain it")
    end = at + len(subject)
    offsets = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)["offset_mapping"]
    inside = [i for i, (left, right) in enumerate(offsets) if right > left and left < end and right > at]
    if not inside:
        raise ValueError(f"no token of {text!r} covers the subject {subject!r}")
    return inside[-1]


def sampled_prefixes(model, tokenizer, lengths: Sequence[Tuple[int, int]], seed: int) -> List[str]:
    """``""`` and, for each ``(length, count)``, ``count`` texts the model continues "The" with
    (``length`` tokens in all, top-5 sampling under ``seed``), as the original's context templates."""
    start = tokenizer("The", add_special_tokens=True, return_tensors="pt")["input_ids"]
    device = next(model.parameters()).device
    prefixes = [""]
    devices = [device] if device.type == "cuda" else []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for index, (length, count) in enumerate(lengths):
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(seed + index)
            ids = start.to(device).repeat(count, 1)
            new = max(length - ids.shape[1], 1)
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=5,
                                 max_new_tokens=new, min_new_tokens=new, pad_token_id=pad)
        prefixes += [tokenizer.decode(row, skip_special_tokens=True).strip() for row in out]
    return prefixes

"""Where locate-then-edit editors (ROME, MEMIT) look a fact up: the subject's last token, in the
prompt and under prefixes the model samples, and the keys an MLP projection reads there.

The original formats ``"{}"`` templates; here texts are built by concatenation (a prefix with its
separator, then the prompt), and the subject's last token is found from the tokenizer's character offsets, so a
subject that tokenizes differently inside a sentence than alone is still found exactly.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch

from ...data import pad_id, pad_sequences

__all__ = ["in_context", "keys_at", "read_at", "sampled_prefixes", "subject_last_index"]


def in_context(prefix: str, text: str) -> str:
    """``text`` after a sampled prefix (the prefix carries its own separator; "" leaves it bare)."""
    return f"{prefix}{text}" if prefix else text


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


def sampled_prefixes(model, tokenizer, lengths: Sequence[Tuple[int, int]], seed: int, *,
                     starts: Sequence[str] = ("The",), separator: str = " ") -> List[str]:
    """``""`` and, for each ``(length, count)``, ``count`` texts the model continues each of ``starts``
    with (``length`` tokens in all, top-5 sampling under ``seed``), each followed by ``separator``:
    the original's context templates (ROME: "The ..." and a space; MEMIT: five starts and ". ")."""
    device = next(model.parameters()).device
    prefixes = [""]
    devices = [device] if device.type == "cuda" else []
    pad = pad_id(tokenizer)
    for index, (length, count) in enumerate(lengths):
        for offset, start in enumerate(starts):
            ids = tokenizer(start, add_special_tokens=True, return_tensors="pt")["input_ids"].to(device)
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                torch.manual_seed(seed + 1000 * index + offset)
                new = max(length - ids.shape[1], 1)
                out = model.generate(ids.repeat(count, 1), attention_mask=torch.ones_like(ids).repeat(count, 1),
                                     do_sample=True, top_k=5, max_new_tokens=new, min_new_tokens=new, pad_token_id=pad)
            prefixes += [tokenizer.decode(row, skip_special_tokens=True).strip() + separator for row in out]
    return prefixes


def keys_at(model, tokenizer, projection, texts: Sequence[str], subject: str, tail: str) -> torch.Tensor:
    """The projection's input at the subject's last token of each text, the subject looked for in
    the text's ``tail`` (what follows its prefix): ``[len(texts), d_k]``."""
    return read_at(model, tokenizer, projection, texts, subject, tail, output=False)


def read_at(model, tokenizer, module, texts: Sequence[str], subject: str, tail: str, *, output: bool) -> torch.Tensor:
    """``module``'s input (or ``output``) at the subject's last token of each text: ``[len(texts), width]``."""
    encoded = [tokenizer(text, add_special_tokens=True)["input_ids"] for text in texts]
    positions = [subject_last_index(tokenizer, text, subject, len(text) - len(tail)) for text in texts]
    device = next(model.parameters()).device
    ids, mask = pad_sequences(encoded, pad_id(tokenizer), left=False, device=device)
    taken = []

    def take_input(_module, args):
        taken.append(args[0].detach())

    def take_output(_module, _args, out):
        taken.append((out[0] if isinstance(out, tuple) else out).detach())

    hook = module.register_forward_hook(take_output) if output else module.register_forward_pre_hook(take_input)
    try:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask, use_cache=False)
    finally:
        hook.remove()
    return taken[0][torch.arange(len(texts), device=device), torch.tensor(positions, device=device)]

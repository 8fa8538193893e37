"""Tokenization of prompt/target pairs, shared by every editor and by the evaluation.

The conventions (docs/data.md) that prevent the field's known bugs:

* a target is a continuation: its ids are those of ``" " + target`` appended to the prompt's ids,
  never the target tokenized alone (BPE merges a leading space into the first token);
* teacher forcing pads on the right with an attention mask; generation pads on the left;
* target positions are known by *position* (a mask), never by comparing ids with
  ``pad_token_id``: many models pad with EOS, which may also be a real target token;
* nothing is truncated silently: a sequence longer than the model's context is an error.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

IGNORE_INDEX = -100


def continuation(target: str) -> str:
    """The text whose tokens follow the prompt: the target with exactly one leading space."""
    return target if target[:1].isspace() else " " + target


@dataclass
class PairBatch:
    """A right-padded batch of ``prompt + " " + target`` sequences for teacher forcing.

    ``labels[b, t]`` is the token at position t where t is a target position and
    ``IGNORE_INDEX`` elsewhere; the logits that predict it sit at position ``t - 1``.
    """

    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L], 1 on real tokens
    labels: torch.Tensor  # [B, L]
    prompt_mask: torch.Tensor  # [B, L] bool, the prompt's tokens
    target_mask: torch.Tensor  # [B, L] bool, the target's tokens
    prompt_lengths: torch.Tensor  # [B]
    target_lengths: torch.Tensor  # [B]

    def to(self, device) -> "PairBatch":
        return PairBatch(**{k: v.to(device) for k, v in vars(self).items()})

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def model_inputs(self) -> dict:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}

    @property
    def last_prompt_positions(self) -> torch.Tensor:
        return self.prompt_lengths - 1


def context_length(tokenizer, model=None) -> Optional[int]:
    """The longest sequence the model accepts, or None when nothing says."""
    if model is not None:
        config = getattr(model, "config", None)
        for name in ("max_position_embeddings", "n_positions", "n_ctx"):
            value = getattr(config, name, None)
            if isinstance(value, int) and value > 0:
                return value
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 1_000_000:
        return limit
    return None


class EncodingCache:
    """Token ids of each prompt and each target, tokenized once however often they are measured.

    One evaluation feeds the same strings many times (answer and rival share a prompt, the
    unedited and the edited model see the same probes, generation re-reads the prompt);
    tokenization is deterministic, so the first result is reused.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._prompts: dict = {}
        self._targets: dict = {}

    def prompt_ids(self, prompt: str) -> List[int]:
        if prompt not in self._prompts:
            self._prompts[prompt] = list(self.tokenizer(prompt, add_special_tokens=True)["input_ids"])
        return self._prompts[prompt]

    def target_ids(self, target: str) -> List[int]:
        """The ids of ``continuation(target)``, as they follow a prompt."""
        if target not in self._targets:
            self._targets[target] = list(self.tokenizer(continuation(target), add_special_tokens=False)["input_ids"])
        return self._targets[target]


def encodings_for(tokenizer, cache: Optional[EncodingCache]) -> EncodingCache:
    """``cache`` if it belongs to ``tokenizer``, a fresh one if None; another tokenizer's is refused."""
    if cache is None:
        return EncodingCache(tokenizer)
    if cache.tokenizer is not tokenizer:
        raise ValueError("the encoding cache belongs to another tokenizer")
    return cache


def _check_text(text: str, what: str, index: int) -> None:
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{what}[{index}] is empty" if isinstance(text, str)
                         else f"{what}[{index}] must be a string, got {type(text).__name__}")


def encode_pairs(tokenizer, prompts: Sequence[str], targets: Sequence[str], *,
                 max_length: Optional[int] = None, device=None, cache: Optional[EncodingCache] = None) -> PairBatch:
    """Tokenize prompt/target pairs for teacher forcing (right padding, target mask by position).

    ``cache``: an :class:`EncodingCache` of ``tokenizer`` that remembers each string's ids."""
    cache = encodings_for(tokenizer, cache)
    if len(prompts) != len(targets):
        raise ValueError(f"got {len(prompts)} prompts but {len(targets)} targets")
    if len(prompts) == 0:
        raise ValueError("no prompt/target pairs to encode")
    rows = []
    for i, (prompt, target) in enumerate(zip(prompts, targets)):
        _check_text(prompt, "prompt", i)
        _check_text(target, "target", i)
        prompt_ids, target_ids = cache.prompt_ids(prompt), cache.target_ids(target)
        if not target_ids:
            raise ValueError(f"target[{i}] {target!r} encodes to no tokens")
        total = len(prompt_ids) + len(target_ids)
        if max_length is not None and total > max_length:
            raise ValueError(
                f"prompt[{i}] with its target is {total} tokens, longer than the model's "
                f"context of {max_length} tokens: {prompt[:60]!r}...")
        rows.append((prompt_ids, target_ids))

    width = max(len(p) + len(t) for p, t in rows)
    batch = len(rows)
    input_ids = torch.full((batch, width), pad_id(tokenizer), dtype=torch.long)
    attention_mask = torch.zeros((batch, width), dtype=torch.long)
    labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)
    prompt_mask = torch.zeros((batch, width), dtype=torch.bool)
    target_mask = torch.zeros((batch, width), dtype=torch.bool)
    for b, (prompt_ids, target_ids) in enumerate(rows):
        p, t = len(prompt_ids), len(target_ids)
        input_ids[b, :p + t] = torch.tensor(prompt_ids + target_ids)
        attention_mask[b, :p + t] = 1
        labels[b, p:p + t] = torch.tensor(target_ids)
        prompt_mask[b, :p] = True
        target_mask[b, p:p + t] = True
    result = PairBatch(
        input_ids=input_ids, attention_mask=attention_mask, labels=labels,
        prompt_mask=prompt_mask, target_mask=target_mask,
        prompt_lengths=torch.tensor([len(p) for p, _ in rows]),
        target_lengths=torch.tensor([len(t) for _, t in rows]),
    )
    return result.to(device) if device is not None else result


@dataclass
class PromptBatch:
    """A left-padded batch of prompts, ready for ``model.generate``."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    @property
    def model_inputs(self) -> dict:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}


def encode_prompts(tokenizer, prompts: Sequence[str], *, max_length: Optional[int] = None,
                   device=None, cache: Optional[EncodingCache] = None) -> PromptBatch:
    """Tokenize prompts for generation: padded on the left so every row ends at the last column."""
    cache = encodings_for(tokenizer, cache)
    encoded = []
    for i, prompt in enumerate(prompts):
        _check_text(prompt, "prompt", i)
        ids = cache.prompt_ids(prompt)
        if max_length is not None and len(ids) > max_length:
            raise ValueError(f"prompt[{i}] is {len(ids)} tokens, longer than the model's context "
                             f"of {max_length} tokens: {prompt[:60]!r}...")
        encoded.append(ids)
    return pad_left(tokenizer, encoded, device=device)


def pad_left(tokenizer, encoded: Sequence[Sequence[int]], *, device=None) -> PromptBatch:
    """Token id sequences padded on the left (for generation), with their attention mask."""
    if not encoded:
        raise ValueError("no prompts to encode")
    return PromptBatch(*pad_sequences(encoded, pad_id(tokenizer), left=True, device=device))


def pad_sequences(sequences: Sequence[Sequence[int]], pad: int, *, left: bool, device=None
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(ids, attention mask)`` of token id sequences padded with ``pad`` on the left or the right."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for b, seq in enumerate(sequences):
        span = slice(width - len(seq), width) if left else slice(0, len(seq))
        ids[b, span] = torch.tensor(list(seq), dtype=torch.long)
        mask[b, span] = 1
    return (ids, mask) if device is None else (ids.to(device), mask.to(device))


def encode_for(model, tokenizer, prompts: Sequence[str], targets: Sequence[str], *,
               cache: Optional[EncodingCache] = None) -> PairBatch:
    """:func:`encode_pairs` on ``model``'s device, refused past its context length."""
    if isinstance(prompts, str) or isinstance(targets, str):
        raise ValueError("prompts and targets must be lists of strings (one per pair), not a single string")
    device = next(model.parameters()).device
    return encode_pairs(tokenizer, list(prompts), list(targets), max_length=context_length(tokenizer, model),
                        device=device, cache=cache)


def pad_id(tokenizer) -> int:
    """The id that pads: the tokenizer's pad token, else its EOS token."""
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token")
    return pad

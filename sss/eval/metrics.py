"""The metrics, each named by the protocol that defines it, so a number is never ambiguous.

Two batched primitives read the model, both through the interface every editor's ``model``
keeps (a Hugging Face causal LM, or SERAC's wrapper that behaves like one):

* :func:`teacher_forced` feeds ``prompt + " " + target`` (right padded, :func:`sss.data.encode_pairs`)
  and returns, for every target token, the argmax prediction and the log-probability of the
  label (the LM head and log-softmax run only where a target token is predicted); target
  positions are known by position, never by comparing ids with the pad id (many models pad
  with EOS).
* :func:`greedy_continuations` generates, from left-padded prompts (:func:`sss.data.tokenize.pad_left`),
  as many tokens as each target has and decodes them.

The metric functions then turn those raw outputs into numbers in [0, 1]:

================  =============================================================================
``token_acc``     EasyEdit's teacher-forced token accuracy: the fraction of a probe's target
                  tokens whose argmax prediction (given the true prefix) is the target token.
``exact_match``   greedy generation of as many tokens as ``" " + target`` has; 1 when the decoded
                  text equals the target after whitespace normalisation (case-sensitive).
``prob_margin``   ROME's probability comparison: 1 when the expected target's mean per-token
                  log-probability (teacher forced) is higher than the rival's (for CounterFact:
                  ``target_new`` over ``target_true`` on edit prompts and paraphrases, the
                  neighbour's true object over ``target_new`` on neighbourhood prompts).
``agreement``     locality as EasyEdit measures it: the fraction of a locality probe's answer
                  positions where the edited model's teacher-forced argmax token equals the
                  *unedited* model's.
================  =============================================================================
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

from ..data import PairBatch, encode_pairs
from ..data.tokenize import EncodingCache, context_length, encodings_for, pad_left
from ..losses.head import logits_selection, predicting_logits
from .lm_head import shares_context

PROTOCOLS = {
    "token_acc": "teacher-forced token accuracy (EasyEdit): prompt + ' ' + target is fed whole; at every "
                 "target position the argmax of the previous position's logits is compared with the target "
                 "token; averaged over the probe's target tokens, then over probes",
    "exact_match": "greedy generation from the left-padded prompt of as many tokens as ' ' + target has; "
                   "1 if the decoded text equals the target after whitespace normalisation (case-sensitive)",
    "prob_margin": "probability comparison (ROME): 1 if the expected target's mean per-token log-probability "
                   "given the prompt (teacher forced) exceeds the rival target's; edit prompts and paraphrases "
                   "expect target_new over target_true, neighbourhood prompts their own answer over target_new",
    "agreement": "locality (EasyEdit): fraction of the locality probe's answer positions where the edited "
                 "model's teacher-forced argmax token equals the unedited model's (computed once, before "
                 "the first edit)",
}
METRICS = tuple(PROTOCOLS)


@dataclass(frozen=True)
class TeacherForced:
    """What one teacher-forced pass says about one ``(prompt, target)`` pair."""

    predicted: Tuple[int, ...]  # argmax token at each target position
    labels: Tuple[int, ...]  # the target's tokens (of " " + target)
    mean_log_prob: float  # mean over the target's tokens of log p(label | prefix)

    def __post_init__(self):
        if len(self.predicted) != len(self.labels) or not self.labels:
            raise ValueError(f"a teacher-forced result needs one prediction per target token, got "
                             f"{len(self.predicted)} predictions for {len(self.labels)} labels")


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def teacher_forced(model, tokenizer, pairs: Sequence[Tuple[str, str]], *, batch_size: int = 32,
                   cache: Optional[EncodingCache] = None) -> List[TeacherForced]:
    """Score ``(prompt, target)`` pairs in right-padded batches of at most ``batch_size`` rows.

    The pairs are tokenized once (``cache`` shares the ids across calls); rows of similar length
    share a forward pass (see :func:`length_buckets`), so short probes are not padded to the
    longest one.
    """
    return teacher_forced_with_gaps(model, tokenizer, pairs, batch_size=batch_size, cache=cache, gaps=False).results


@dataclass
class TeacherForcedPass:
    """What :func:`teacher_forced_with_gaps` returns, aligned with its pairs."""

    results: List[TeacherForced]
    gaps: List[Optional[Tuple[float, ...]]]  # top-1 minus top-2 logit at each target position
    alternatives: List[Optional[TeacherForced]]  # the alternative targets scored in the pair's row


@torch.no_grad()
def teacher_forced_with_gaps(model, tokenizer, pairs: Sequence[Tuple[str, str]], *, batch_size: int = 32,
                             cache: Optional[EncodingCache] = None, gaps: bool = True,
                             alternatives: Optional[Sequence[Optional[Sequence[int]]]] = None) -> TeacherForcedPass:
    """:func:`teacher_forced`, plus per pair the gap between the two largest logits at each target
    position (how far each argmax is from a tie; None for every pair when ``gaps`` is False).

    ``alternatives[i]``: token ids of another target for pair i's prompt, scored in pair i's own
    row (no extra row) — allowed only where :func:`shares_context` holds, e.g. a one-token rival
    answer, whose log-probability the prompt's last position already gives.
    """
    _check_batch_size(batch_size)
    alternatives = list(alternatives) if alternatives is not None else [None] * len(pairs)
    if len(alternatives) != len(pairs):
        raise ValueError(f"got {len(alternatives)} alternatives for {len(pairs)} pairs")
    if not pairs:
        return TeacherForcedPass([], [], [])
    device, limit = model_device(model), context_length(tokenizer, model)
    encoded = encode_pairs(tokenizer, [p for p, _ in pairs], [t for _, t in pairs], max_length=limit, cache=cache)
    results: List[Optional[TeacherForced]] = [None] * len(pairs)
    margins: List[Optional[Tuple[float, ...]]] = [None] * len(pairs)
    others: List[Optional[TeacherForced]] = [None] * len(pairs)
    selection = logits_selection(model)
    for rows in length_buckets((encoded.prompt_lengths + encoded.target_lengths).tolist(), batch_size):
        batch = _rows_of_pairs(encoded, rows).to(device)
        scores = predicting_logits(model, batch, selection)  # [target tokens of the bucket, V], row after row
        mask = batch.target_mask[:, 1:]
        labels = batch.labels[:, 1:][mask]
        log_probs = torch.log_softmax(scores.to(torch.promote_types(scores.dtype, torch.float32)), dim=-1)
        picked = log_probs.gather(-1, labels[:, None])[:, 0].tolist()
        predicted, labels = scores.argmax(-1).tolist(), labels.tolist()
        row_gaps = None
        if gaps:
            top2 = scores.topk(2, dim=-1).values.float()
            row_gaps = (top2[:, 0] - top2[:, 1]).tolist()
        offset = 0
        for row, n in zip(rows, mask.sum(-1).tolist()):
            span = slice(offset, offset + n)
            results[row] = TeacherForced(tuple(predicted[span]), tuple(labels[span]), math.fsum(picked[span]) / n)
            if row_gaps is not None:
                margins[row] = tuple(row_gaps[span])
            other = alternatives[row]
            if other is not None:
                if not shares_context(results[row].labels, other):
                    raise ValueError(f"alternative target {list(other)} of pair {row} needs its own row")
                positions = torch.arange(offset, offset + len(other), device=log_probs.device)
                values = log_probs[positions, torch.tensor(list(other), device=log_probs.device)].tolist()
                others[row] = TeacherForced(tuple(predicted[offset:offset + len(other)]), tuple(other),
                                            math.fsum(values) / len(other))
            offset += n
    return TeacherForcedPass(results, margins, others)


def greedy_continuations(model, tokenizer, prompts: Sequence[str], lengths: Sequence[int], *,
                         batch_size: int = 32, cache: Optional[EncodingCache] = None) -> List[str]:
    """Greedy continuation of each prompt, ``lengths[i]`` tokens long, decoded.

    Prompts are padded on the left so every row's last column is its last prompt token; rows of
    similar length share a ``generate`` call, which runs to the longest length of its rows; each
    row keeps its own first ``lengths[i]`` new tokens (a row that emitted EOS early keeps what it
    produced).
    """
    if len(prompts) != len(lengths):
        raise ValueError(f"got {len(prompts)} prompts but {len(lengths)} lengths")
    if not prompts:
        return []
    cache = encodings_for(tokenizer, cache)
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"prompt[{i}] is empty" if isinstance(prompt, str)
                             else f"prompt[{i}] must be a string, got {type(prompt).__name__}")
    tokens = greedy_tokens(model, tokenizer, [cache.prompt_ids(p) for p in prompts], lengths, batch_size=batch_size)
    return [tokenizer.decode(ids, skip_special_tokens=True) for ids in tokens]


@torch.no_grad()
def greedy_tokens(model, tokenizer, sequences: Sequence[Sequence[int]], lengths: Sequence[int], *,
                  batch_size: int = 32) -> List[List[int]]:
    """The first ``lengths[i]`` tokens that greedy ``generate`` appends to each id sequence."""
    _check_batch_size(batch_size)
    if len(sequences) != len(lengths):
        raise ValueError(f"got {len(sequences)} sequences but {len(lengths)} lengths")
    if any(n < 1 for n in lengths):
        raise ValueError("every continuation needs at least one token")
    if not sequences:
        return []
    device, limit = model_device(model), context_length(tokenizer, model)
    for i, ids in enumerate(sequences):
        if limit is not None and len(ids) > limit:
            raise ValueError(f"prompt[{i}] is {len(ids)} tokens, longer than the model's context of {limit} tokens")
    encoded = pad_left(tokenizer, sequences)
    prompt_lengths = encoded.attention_mask.sum(-1)
    tokens: List[Optional[List[int]]] = [None] * len(sequences)
    for rows in length_buckets((prompt_lengths + torch.tensor(list(lengths))).tolist(), batch_size):
        width = int(prompt_lengths[rows].max())
        # Left padding: the rows' real tokens all sit in the last `width` columns.
        input_ids = encoded.input_ids[rows, -width:].to(device)
        attention_mask = encoded.attention_mask[rows, -width:].to(device)
        sizes = [lengths[row] for row in rows]
        output = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max(sizes),
                                do_sample=False)
        new_tokens = output[:, width:]
        for i, (row, size) in enumerate(zip(rows, sizes)):
            tokens[row] = new_tokens[i, :size].tolist()
    return tokens


# A forward pass has a fixed cost; in padded token slots it is worth about this many (a guess
# that only shifts where buckets split; results never depend on it).
CALL_COST_IN_TOKENS = 32


def length_buckets(lengths: Sequence[int], max_rows: int, call_cost: int = CALL_COST_IN_TOKENS
                   ) -> List[List[int]]:
    """Group row indices into batches of similar length, minimising padded token slots.

    Sorted by length, the rows are cut into consecutive runs of at most ``max_rows``; dynamic
    programming picks the cuts minimising ``sum(rows * longest) + call_cost * batches``. Ties in
    length keep the input order, so the grouping depends only on the lengths.
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[j]: cheapest split of the first j sorted rows
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(max(0, j - max_rows), j):
            cost = best[i] + (j - i) * lengths[order[j - 1]] + call_cost
            if cost < best[j]:
                best[j], cut[j] = cost, i
    buckets, j = [], n
    while j > 0:
        buckets.append(order[cut[j]:j])
        j = cut[j]
    return buckets[::-1]


def _rows_of_pairs(batch: PairBatch, rows: List[int]) -> PairBatch:
    """Rows of a right-padded batch, with the columns that are padding in all of them dropped."""
    width = int((batch.prompt_lengths[rows] + batch.target_lengths[rows]).max())
    return PairBatch(**{name: value[rows] if value.dim() == 1 else value[rows, :width]
                        for name, value in vars(batch).items()})


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


# -- the metrics ---------------------------------------------------------------------------------

def token_acc(result: TeacherForced) -> float:
    """``token_acc``: fraction of target tokens predicted right under teacher forcing."""
    hits = sum(int(p == y) for p, y in zip(result.predicted, result.labels))
    return hits / len(result.labels)


def normalise_whitespace(text: str) -> str:
    return " ".join(text.split())


def exact_match(generated: str, target: str) -> float:
    """``exact_match``: 1.0 when the generation equals the target up to whitespace."""
    return float(normalise_whitespace(generated) == normalise_whitespace(target))


def prob_margin(expected: TeacherForced, rival: TeacherForced) -> float:
    """``prob_margin``: 1.0 when the expected target's mean token log-prob beats the rival's."""
    return float(expected.mean_log_prob > rival.mean_log_prob)


def agreement(edited: TeacherForced, unedited: TeacherForced) -> float:
    """``agreement``: fraction of answer positions where edited and unedited argmax tokens agree."""
    if edited.labels != unedited.labels:
        raise ValueError("agreement compares two passes over the same probe, but their target tokens differ")
    same = sum(int(a == b) for a, b in zip(edited.predicted, unedited.predicted))
    return same / len(edited.labels)


# -- the same two measurements on logits a training objective already holds ----------------------

def token_accuracy(logits: torch.Tensor, batch: PairBatch) -> torch.Tensor:
    """Per example of ``batch``: ``token_acc`` read from ``logits`` of its teacher-forced pass ([B], float64).

    For training objectives (MEND's, SERAC's validation), which have the logits already.
    """
    predicted = logits[:, :-1].argmax(-1)
    mask = batch.target_mask[:, 1:]
    hits = ((predicted == batch.labels[:, 1:]) & mask).sum(-1).to(torch.float64)
    return hits / mask.sum(-1).clamp_min(1).to(torch.float64)


def argmax_agreement(pre_logits: torch.Tensor, post_logits: torch.Tensor, batch: PairBatch) -> torch.Tensor:
    """Per example: ``agreement`` of two models' logits on the answer positions of ``batch`` ([B], float64)."""
    mask = batch.target_mask[:, 1:]
    same = (pre_logits[:, :-1].argmax(-1) == post_logits[:, :-1].argmax(-1)) & mask
    return same.sum(-1).to(torch.float64) / mask.sum(-1).clamp_min(1).to(torch.float64)


def mean(values: Sequence[float]) -> Optional[float]:
    return sum(values) / len(values) if values else None

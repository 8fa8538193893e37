"""Greedy continuations read off the teacher-forced pass, generating only where they could differ.

``exact_match`` decodes what greedy ``generate`` appends to a prompt, as many tokens ``T`` as the
target has. Greedy decoding's first step is the argmax at the prompt's last position, which the
teacher-forced pass of ``prompt + target`` has already computed; while the generated tokens
equal the target's, greedy decoding's context *is* the teacher-forced prefix, so its next token
is again the teacher-forced argmax. Hence, with ``k`` the first position where the
teacher-forced argmax differs from the target token (``k = T`` if none), the first
``n = min(k + 1, T)`` generated tokens are the teacher-forced argmaxes ``predicted[:n]``:

* ``n == T`` (the argmax reproduces the target, or first misses it at the last token): the
  whole continuation is known and nothing is generated;
* otherwise greedy decoding continues from ``prompt + predicted[:n]`` for the ``T - n`` tokens
  left (fewer steps than from the prompt, same tokens: greedy decoding is a function of its
  context).

The argument needs exact arithmetic; in floats the two passes differ by rounding, so a position
whose two largest logits are within :data:`TIE_TOLERANCE` is treated as undecided and its row is
generated from the prompt, as without the shortcut. So is a row whose known tokens contain EOS
(``generate`` stops there and pads), and every row of a model for which the premise fails: one
that is not a plain Hugging Face causal LM (SERAC's wrapper routes generation on the prompt but
teacher forcing on prompt + target), or whose generation config changes the logits
(repetition penalty, suppressed tokens, minimum length, beams, ...).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

from ..data.tokenize import EncodingCache, encodings_for
from .metrics import TeacherForced, greedy_tokens

# Logit gaps below this count as ties. Teacher forcing and generate (KV cache, other padding)
# round differently by ~1e-5 on fp32 logits of size ~10-30; this leaves two orders of margin.
TIE_TOLERANCE = 1e-3

# GenerationConfig fields whose non-default values add logits processors to greedy decoding.
_LOGITS_CHANGING = ("repetition_penalty", "encoder_repetition_penalty", "no_repeat_ngram_size",
                    "encoder_no_repeat_ngram_size", "bad_words_ids", "suppress_tokens", "begin_suppress_tokens",
                    "min_length", "min_new_tokens", "forced_bos_token_id", "forced_eos_token_id", "num_beams",
                    "num_beam_groups", "diversity_penalty", "sequence_bias", "exponential_decay_length_penalty",
                    "guidance_scale", "watermarking_config", "penalty_alpha")


def shortcut_applies(model) -> bool:
    """Whether greedy ``generate`` on ``model`` follows its teacher-forced argmax (see the module doc)."""
    from transformers import GenerationConfig, PreTrainedModel  # here: importing transformers is slow

    if not isinstance(model, PreTrainedModel):
        return False
    config = getattr(model, "generation_config", None)
    if config is None:
        return True
    default = GenerationConfig()
    return all(getattr(config, name, None) == getattr(default, name, None) for name in _LOGITS_CHANGING)


def _eos_ids(model) -> set:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = getattr(getattr(model, "config", None), "eos_token_id", None)
    return set(eos) if isinstance(eos, (list, tuple)) else ({eos} if eos is not None else set())


def known_prefix(answer: TeacherForced, gaps: Optional[Sequence[float]], eos: set,
                 tolerance: float = TIE_TOLERANCE) -> Optional[Tuple[int, ...]]:
    """The first tokens greedy decoding is bound to produce, or None when the row must be generated."""
    if gaps is None:
        return None
    k = next((t for t, (p, y) in enumerate(zip(answer.predicted, answer.labels)) if p != y), len(answer.labels))
    n = min(k + 1, len(answer.labels))
    prefix = answer.predicted[:n]
    if any(gap <= tolerance for gap in gaps[:n]) or eos.intersection(prefix):
        return None
    return prefix


def greedy_from_teacher_forcing(model, tokenizer, prompts: Sequence[str], answers: Sequence[TeacherForced],
                                gaps: Sequence[Optional[Sequence[float]]], *, batch_size: int = 32,
                                cache: Optional[EncodingCache] = None) -> Tuple[List[str], dict]:
    """What :func:`sss.eval.metrics.greedy_continuations` returns for ``prompts`` with the answers'
    lengths, reusing the teacher-forced pass. Also returns counts of how each row was obtained
    (``read``: no generation, ``continued``: generated from the known prefix, ``generated``)."""
    cache = encodings_for(tokenizer, cache)
    applies, eos = shortcut_applies(model), _eos_ids(model)
    tokens: List[Optional[List[int]]] = [None] * len(prompts)
    continued, generated, starts = [], [], {}
    for i, answer in enumerate(answers):
        prefix = known_prefix(answer, gaps[i], eos) if applies else None
        if prefix is None:
            generated.append(i)
        elif len(prefix) == len(answer.labels):
            tokens[i] = list(prefix)
        else:
            continued.append(i)
            starts[i] = list(prefix)
    sequences = [cache.prompt_ids(prompts[i]) + starts[i] for i in continued]
    rest = [len(answers[i].labels) - len(starts[i]) for i in continued]
    for i, more in zip(continued, greedy_tokens(model, tokenizer, sequences, rest, batch_size=batch_size)):
        tokens[i] = starts[i] + more
    full = greedy_tokens(model, tokenizer, [cache.prompt_ids(prompts[i]) for i in generated],
                         [len(answers[i].labels) for i in generated], batch_size=batch_size)
    for i, ids in zip(generated, full):
        tokens[i] = ids
    texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in tokens]
    counts = {"read": len(prompts) - len(continued) - len(generated), "continued": len(continued),
              "generated": len(generated)}
    return texts, counts

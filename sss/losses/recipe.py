"""SSS in anyone's training loop: the penalty of a batch of prompt/target pairs, ready to backward.

The editors call :meth:`SparsityRegularizer.loss_and_penalty` inside their own steps; this module
is the same computation for downstream code that owns its loop (a plain PyTorch loop, a
``transformers.Trainer``'s ``compute_loss``)::

    regularizer = SSSRegularizer(C=0.9)
    penalty = sss_penalty(model, tokenizer, prompts, targets, regularizer=regularizer)
    regularizer.combine(loss, penalty).backward()      # (1 - C) * loss + C * penalty (Eq. 10)

The penalty is a gradient built with ``create_graph=True``, so its own gradient reaches every
parameter that requires grad. Second-order gradients do not pass through PyTorch's fused CPU
attention, so the forward pass runs under :func:`sss.models.second_order_attention`; the graph it
records stays differentiable after the context has closed, so ``backward`` may come later.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch
from torch import nn

from ..data import PairBatch, encode_for
from ..models import second_order_attention
from .base import SparsityRegularizer
from .sss import SSSRegularizer


class SSSTerms(NamedTuple):
    """What one forward pass of a batch of pairs gives: everything Eq. 10 needs."""

    nll: torch.Tensor  # [B], J of each pair: the mean NLL of its target tokens, teacher forced
    penalty: torch.Tensor  # scalar, the regularizer's penalty of the batch
    logits: torch.Tensor  # [B, L, V]


def resolve_regularizer(regularizer: Optional[SparsityRegularizer], options: dict) -> SparsityRegularizer:
    """``regularizer`` itself, or an :class:`SSSRegularizer` built from ``options`` (its keywords)."""
    if regularizer is None:
        return SSSRegularizer(**options)
    if options:
        raise ValueError(f"pass either regularizer= or SSSRegularizer options ({', '.join(sorted(options))}), not both")
    if not isinstance(regularizer, SparsityRegularizer):
        raise ValueError(f"regularizer must be a SparsityRegularizer, got {type(regularizer).__name__}")
    return regularizer


def sss_terms(model: nn.Module, batch: PairBatch, regularizer: Optional[SparsityRegularizer] = None,
              **options) -> SSSTerms:
    """The per-pair NLL and the penalty of an already encoded batch (``sss.data.encode_pairs``).

    ``regularizer``: any :class:`SparsityRegularizer`; by default ``SSSRegularizer(**options)``
    (``C``, ``target``, ``tokens``, ``reduction``). Grad is enabled even under ``torch.no_grad``
    because the penalty is itself a gradient.
    """
    regularizer = resolve_regularizer(regularizer, options)
    with torch.enable_grad(), second_order_attention(model):
        logits, nll, penalty = regularizer.loss_and_penalty(model, batch)
    return SSSTerms(nll, penalty, logits)


def sss_penalty(model: nn.Module, tokenizer, prompts: Sequence[str], targets: Sequence[str], *,
                regularizer: Optional[SparsityRegularizer] = None, **options) -> torch.Tensor:
    """The SSS penalty (Eq. 9) of ``prompt + " " + target`` pairs, as a scalar with its graph kept.

    Mix it with your own loss through ``regularizer.combine(loss, penalty)``, i.e.
    ``(1 - C) * loss + C * penalty``. Without ``regularizer`` an ``SSSRegularizer(**options)`` is
    used (the paper's defaults: gradient at the last hidden state, prompt tokens, mean).
    """
    return sss_terms(model, encode_for(model, tokenizer, prompts, targets), regularizer, **options).penalty


def sss_loss(model: nn.Module, tokenizer, prompts: Sequence[str], targets: Sequence[str], *,
             regularizer: Optional[SparsityRegularizer] = None, **options) -> torch.Tensor:
    """Eq. 10 on the pairs themselves: ``(1 - C) * mean J + C * penalty``, from one forward pass.

    For training directly on prompt/target pairs (fine-tuning facts in), where the pairs' own
    target NLL is the loss being regularized.
    """
    regularizer = resolve_regularizer(regularizer, options)
    terms = sss_terms(model, encode_for(model, tokenizer, prompts, targets), regularizer)
    return regularizer.combine(terms.nll.mean(), terms.penalty)

"""The counterfactual model's logits at the columns a loss or a caller reads, and nowhere else.

On small models the vocabulary-wide LM head (and the log-softmax after it) costs more than the
blocks, and SERAC's losses read few positions: the target predictions of the conditioned edit
prompts (not the edit prefix in front of them), the locality inputs' own positions. So the
model's backbone runs on the whole sequence (every position feeds attention) and the head only
on the chosen columns. For the architectures of ``sss.models.ARCHITECTURES`` the causal LM's
forward is ``lm_head(backbone(...).last_hidden_state)`` (``sss.models.backbone``), so the logits kept are the ones the full
forward computes, and gradients are those of full logits (a column no loss reads gets zero
gradient there too). Dropout lives in the backbone, so even in training mode the random draws
are the full forward's. Any other model runs in full and the columns are taken from its logits.

With SSS on ``last_hidden`` the penalty's input stays exact: the final hidden states at every
position, of which the head reads the window (tests/test_serac_fast.py checks loss and
gradients against the full-logit computation).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ...data import PairBatch
from ...losses import SparsityRegularizer, runs_base_forward, target_nll
from ...losses.window import at_columns, target_window
from ...models import backbone


def final_hidden(model: nn.Module, inputs: dict) -> Optional[torch.Tensor]:
    """The LM head's input at every position ``[B, L, H]``, or None where :func:`backbone` is unknown."""
    inner = backbone(model)
    return None if inner is None else inner(**inputs).last_hidden_state


def logits_at(model: nn.Module, inputs: dict, columns: torch.Tensor) -> torch.Tensor:
    """``model(**inputs).logits[b, columns[b, j]]``, ``[B, W, V]``, with the head run on those columns only."""
    hidden = final_hidden(model, inputs)
    if hidden is None:
        return at_columns(model(**inputs).logits, columns)
    return model.get_output_embeddings()(at_columns(hidden, columns))


def head_on_window(model: nn.Module, hidden: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """The head at a target window's columns but the last: that one holds each longest target's
    last token, which predicts nothing a loss reads (``target_nll`` drops the last column), so
    it is left zero. Saves half the head's work for one-token targets."""
    logits = model.get_output_embeddings()(at_columns(hidden, columns[:, :-1]))
    return F.pad(logits, (0, 0, 0, 1))


def window_logits(model: nn.Module, batch: PairBatch) -> Tuple[torch.Tensor, PairBatch]:
    """Logits of the target window and the narrow batch they match (``sss.losses.window``); the
    window's last column is zeros (see :func:`head_on_window`)."""
    columns, narrow = target_window(batch)
    hidden = final_hidden(model, batch.model_inputs)
    if hidden is None:
        return at_columns(model(**batch.model_inputs).logits, columns), narrow
    return head_on_window(model, hidden, columns), narrow


def narrow_penalty_applies(regularizer: SparsityRegularizer) -> bool:
    """Whether the regularizer's penalty reads the head's input and ``J`` as the base class computes
    them (a subclass with its own forward or loss runs in full, its computation being its own)."""
    return regularizer.target == "last_hidden" and runs_base_forward(regularizer)


def window_loss_and_penalty(regularizer: SparsityRegularizer, model: nn.Module, batch: PairBatch
                            ) -> Tuple[torch.Tensor, PairBatch, torch.Tensor, torch.Tensor]:
    """``regularizer.loss_and_penalty(model, batch)`` with the head on the target window only:
    ``(window logits, narrow batch, J per example, penalty)`` (last window column zeros)."""
    columns, narrow = target_window(batch)
    hidden = final_hidden(model, batch.model_inputs) if narrow_penalty_applies(regularizer) else None
    if hidden is None:
        logits, nll, penalty = regularizer.loss_and_penalty(model, batch)
        return at_columns(logits, columns), narrow, nll, penalty
    if not hidden.requires_grad:  # nothing below the head trains: the gradient must still exist
        hidden = hidden.detach().requires_grad_(True)
    logits = head_on_window(model, hidden, columns)
    nll = target_nll(logits, narrow)
    return logits, narrow, nll, regularizer.penalty(nll, hidden, regularizer.token_mask(batch))


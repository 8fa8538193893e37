"""Logits (and the losses on them) at the positions a loss reads, the vocabulary-wide head nowhere else.

On small models the LM head (and the log-softmax after it) costs more than the blocks, and the
edit losses read few positions. For the architectures of ``sss.models.ARCHITECTURES`` a causal
LM's logits are ``lm_head(backbone(...).last_hidden_state)`` (``sss.models.backbone``), so the
backbone runs on the whole sequence (every position feeds attention) and the head on the chosen
columns only: the logits kept are those the full forward computes, and gradients are those of
full logits (a column no loss reads gets zero gradient there too). Any other model runs in full
and the columns are taken from its logits.
"""
from __future__ import annotations

import inspect
import sys
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ...data import PairBatch
from ...models import backbone
from ..base import SparsityRegularizer
from ..edit import target_nll
from .columns import at_columns, target_window
from .frozen import transposed


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
    """Logits of the target window and the narrow batch they match (:func:`target_window`); the
    window's last column is zeros (see :func:`head_on_window`)."""
    columns, narrow = target_window(batch)
    hidden = final_hidden(model, batch.model_inputs)
    if hidden is None:
        return at_columns(model(**batch.model_inputs).logits, columns), narrow
    return head_on_window(model, hidden, columns), narrow


def window_loss_and_penalty(regularizer: SparsityRegularizer, model: nn.Module, batch: PairBatch
                            ) -> Tuple[torch.Tensor, PairBatch, torch.Tensor, torch.Tensor]:
    """``regularizer.loss_and_penalty(model, batch)`` with the head on the target window only:
    ``(window logits, narrow batch, J per example, penalty)`` (last window column zeros).

    Narrowed only where the regularizer allows it (its ``shortcuts()``): its penalty reads the
    head's input and ``J`` as the base class computes them; otherwise it runs as written.
    """
    columns, narrow = target_window(batch)
    allowed = regularizer.shortcuts()
    hidden = final_hidden(model, batch.model_inputs) if allowed.own_forward and allowed.target == "last_hidden" else None
    if hidden is None:
        logits, nll, penalty = regularizer.loss_and_penalty(model, batch)
        return at_columns(logits, columns), narrow, nll, penalty
    if not hidden.requires_grad:  # nothing below the head trains: the gradient must still exist
        hidden = hidden.detach().requires_grad_(True)
    logits = head_on_window(model, hidden, columns)
    nll = target_nll(logits, narrow)
    return logits, narrow, nll, regularizer.penalty(nll, hidden, regularizer.token_mask(batch))


def frozen_head(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The LM head as ``x @ W^T`` with a contiguous ``W^T`` (:func:`transposed`) when it is a frozen
    ``nn.Linear`` (faster for the few rows a step reads; equal to rounding), else the head itself."""
    head = model.get_output_embeddings()
    frozen = type(head) is nn.Linear and not head.weight.requires_grad \
        and (head.bias is None or not head.bias.requires_grad)
    if not frozen:
        return head
    weight_t, bias = transposed(head.weight), head.bias
    return (lambda x: x @ weight_t) if bias is None else (lambda x: x @ weight_t + bias)


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

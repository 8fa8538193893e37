"""What one FT-L step computes, and how little of the model it has to run for it.

FT-L trains MLP output projections and freezes everything else, so per edit
(:func:`step_forward`):

* the blocks below the lowest edited block, and inside it everything before the projection,
  run once (``sss.editors.block_cache.BlockCache``); a step runs the projection on the cached input,
  the residual add, the blocks above, the final norm;
* the LM head runs only at the positions the loss reads: for ``prompt_last`` the last prompt
  position of each row, for ``target_new`` (and for SSS's ``J``) the positions that predict the
  target tokens; the logits come back as a narrow ``[B, W, V]`` tensor with a matching
  ``PairBatch``, so ``sss.losses.edit_loss`` reads the same values it reads from full logits;
* for ``prompt_last`` without a regularizer only the prompt is fed: under causal attention the
  target tokens after it cannot change the last prompt position's logits.

The full forward (the straightforward loop) stays the fallback where the cache would be wrong:
modules in training mode (dropout differs at every step), SSS with ``target="input_embeds"`` or
a block index below the lowest edited block (the penalty differentiates through the frozen
blocks, so they must run with a graph at every step), and regularizers that override
``forward``/``loss_and_penalty`` (their computation is theirs). With ``last_hidden`` the head's
input is the final norm's output at every position, so SSS sees the gradient at every masked
position; positions whose logits ``J`` does not read get exactly zero gradient, as with full
logits. tests/test_ftl_fast.py checks the final weights against the straightforward loop.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Optional, Tuple

import torch

from .block_cache import BlockCache
from ..data import PairBatch
from ..data.tokenize import IGNORE_INDEX
from ..losses import SparsityRegularizer, target_nll

logger = logging.getLogger(__name__)

StepResult = Tuple[torch.Tensor, PairBatch, Optional[torch.Tensor]]  # logits, batch they match, penalty


def step_forward(model, batch: PairBatch, objective: str, regularizer: Optional[SparsityRegularizer],
                 lowest_block: int) -> Callable[[], StepResult]:
    """A function that runs one step's forward: ``() -> (logits, loss batch, penalty or None)``."""
    reason = full_path_reason(model, regularizer, lowest_block)
    if reason is not None:
        logger.debug("FT-L runs the full forward at every step: %s", reason)
        return _full_step(model, batch, regularizer)
    return _cached_step(model, batch, objective, regularizer, lowest_block)


def full_path_reason(model, regularizer, lowest_block: int) -> Optional[str]:
    """Why the cached path would not give the straightforward loop's result, or None."""
    if any(module.training for module in model.modules()):
        return "modules are in training mode"
    if regularizer is None:
        return None
    kind = type(regularizer)
    if kind.forward is not SparsityRegularizer.forward or \
            kind.loss_and_penalty is not SparsityRegularizer.loss_and_penalty:
        return f"{kind.__name__} computes its own forward pass"
    target = regularizer.target
    if target == "input_embeds":
        return "SSS target input_embeds differentiates through every block"
    if isinstance(target, int) and target < lowest_block:
        return f"SSS target block {target} lies below the lowest edited block {lowest_block}"
    return None


def _full_step(model, batch, regularizer) -> Callable[[], StepResult]:
    def step():
        if regularizer is None:
            return model(**batch.model_inputs).logits, batch, None
        logits, _, penalty = regularizer.loss_and_penalty(model, batch)
        return logits, batch, penalty
    return step


def _cached_step(model, batch, objective, regularizer, lowest_block) -> Callable[[], StepResult]:
    prompt_only = regularizer is None and objective == "prompt_last"
    width = int(batch.prompt_lengths.max()) if prompt_only else batch.input_ids.shape[1]
    cache = BlockCache.capture(model, lowest_block, batch.input_ids[:, :width], batch.attention_mask[:, :width])
    head = model.get_output_embeddings()
    target = regularizer.target if regularizer is not None else None
    # A block-index target equal to the edited block needs that whole block in the graph.
    from_block_input = target == lowest_block
    if prompt_only:
        # One column per row, the last prompt position; prompt_last_nll reads column prompt_length - 1.
        columns = batch.last_prompt_positions.unsqueeze(1)
        loss_batch = dataclasses.replace(batch, prompt_lengths=torch.ones_like(batch.prompt_lengths))
    else:
        columns, loss_batch = _target_window(batch)
    rows = torch.arange(len(batch), device=columns.device).unsqueeze(1)

    def step():
        if from_block_input:
            embeddings = cache.block_input.detach().requires_grad_(True)
            hidden, _ = cache.run_blocks(embeddings, lowest_block)
        else:
            tap = target if isinstance(target, int) else None
            hidden, embeddings = cache.run_blocks(cache.block_output(), lowest_block + 1, tap=tap)
        final = cache.final_hidden(hidden)
        logits = head(final[rows, columns])
        if regularizer is None:
            return logits, loss_batch, None
        if target == "last_hidden":
            embeddings = final
        penalty = regularizer.penalty(target_nll(logits, loss_batch), embeddings, regularizer.token_mask(batch))
        return logits, loss_batch, penalty

    return step


def _target_window(batch: PairBatch) -> Tuple[torch.Tensor, PairBatch]:
    """The columns from each row's last prompt position to its last target token, as a batch.

    Row b's window starts at ``prompt_length - 1`` and is ``max target length + 1`` wide, so
    ``target_nll`` (logits at t-1 predict the label at t) and ``prompt_last_nll`` (column 0 once
    the prompt length is 1) read exactly the predictions they read on the full batch. Columns
    past a row's end are marked as neither prompt nor target.
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

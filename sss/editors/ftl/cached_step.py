"""What one FT-L step computes, and how little of the model it has to run for it.

FT-L trains MLP output projections and freezes everything else, so per edit
(:func:`step_forward`):

* the blocks below the lowest edited block, and inside it everything before the projection,
  run once (``sss.editors.core.block_cache.BlockCache``); a step runs the projection on the cached input,
  the residual add, the blocks above, the final norm;
* the LM head runs only at the positions the loss reads: for ``prompt_last`` the last prompt
  position of each row, for ``target_new`` (and for SSS's ``J``) the positions that predict the
  target tokens; the logits come back as a narrow ``[B, W, V]`` tensor with a matching
  ``PairBatch`` (``sss.losses.head``), so ``sss.losses.edit_loss`` reads the same values it
  reads from full logits;
* for ``prompt_last`` without a regularizer only the prompt is fed: under causal attention the
  target tokens after it cannot change the last prompt position's logits. The same holds where
  the regularizer declares that it reads J's gradient at the last prompt position only (SSS on
  ``last_hidden`` over the prompt tokens, the default: ``Shortcuts.last_prompt_gradient_only``),
  so J is replaced by its term for the first target token (``sss.losses.first_target_nll``),
  which has that gradient;
* otherwise the last token of the longest row is left out (:func:`fed_width`): it predicts
  nothing either loss reads, and it changes no position before it;
* the LM head is read through a contiguous transposed copy (``sss.losses.head.frozen_head``).

SSS on ``input_embeds``, or on a block at or below the lowest edited one, differentiates through
the frozen part, so the capture keeps that part's graph (``BlockCache.capture(leaf_at=...)``):
its forward runs once per edit and every step's two backward passes reuse it. There the target
tokens must be fed (all but the last): J's terms for the second and later target tokens read
positions whose hidden states depend, through attention, on every prompt embedding. The step's
final backward must go to the trained weights only (``loss.backward(inputs=...)``, as FT-L does),
which also skips the gradient of the embeddings nobody reads.

The full forward (the straightforward loop) stays the fallback where the cache would be wrong:
modules in training mode (dropout differs at every step) and regularizers that do not allow an
editor its own forward (``Shortcuts.own_forward``: their computation is theirs). With ``last_hidden`` the head's
input is the final norm's output at every position, so SSS sees the gradient at every masked
position; positions whose logits ``J`` does not read get exactly zero gradient, as with full
logits. tests/test_ftl_fast.py checks the final weights against the straightforward loop.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
from typing import Callable, Optional, Tuple

import torch

from ...data import PairBatch
from ...losses import SparsityRegularizer, first_target_nll, target_nll
from ...losses.head import at_columns, frozen_head, target_window
from ...models import second_order_attention
from ..core.block_cache import BlockCache

logger = logging.getLogger(__name__)

StepResult = Tuple[torch.Tensor, PairBatch, Optional[torch.Tensor]]  # logits, batch they match, penalty


def step_forward(model, batch: PairBatch, objective: str, regularizer: Optional[SparsityRegularizer],
                 lowest_block: int, projection: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
                 ) -> Callable[[], StepResult]:
    """A function that runs one step's forward: ``() -> (logits, loss batch, penalty or None)``.

    Call it with only the trained weights requiring grad (:func:`train_only`): the LM head is
    then frozen and read through its transposed copy. ``projection`` stands in for the lowest
    edited block's MLP output projection (``sss.editors.ftl.grouped``: one weight copy per row);
    it needs the cached path.
    """
    reason = full_path_reason(model, regularizer, lowest_block)
    if reason is not None:
        if projection is not None:
            raise ValueError(f"a replacement projection needs FT-L's cached step, which does not apply: {reason}")
        logger.debug("FT-L runs the full forward at every step: %s", reason)
        return _full_step(model, batch, regularizer)
    return _cached_step(model, batch, objective, regularizer, lowest_block, projection)


def full_path_reason(model, regularizer, lowest_block: int) -> Optional[str]:
    """Why the cached path would not give the straightforward loop's result, or None."""
    if any(module.training for module in model.modules()):
        return "modules are in training mode"
    if regularizer is None:
        return None
    if not regularizer.shortcuts().own_forward:
        return f"{type(regularizer).__name__} computes its own forward pass"
    return None


def graph_origin(regularizer: Optional[SparsityRegularizer], lowest_block: int):
    """Where the penalty's gradient is taken if that lies in the frozen part, else None.

    ``"input_embeds"``, or a block index at or below the lowest edited block: ``BlockCache``'s
    ``leaf_at``. ``last_hidden`` and blocks above are reached by every step's own graph.
    """
    target = regularizer.target if regularizer is not None else None
    if target == "input_embeds" or (isinstance(target, int) and target <= lowest_block):
        return target
    return None


def fed_width(batch: PairBatch, regularizer: Optional[SparsityRegularizer], prompt_only: bool) -> int:
    """How many columns a step feeds: the prompt only, or all but the longest row's last token.

    The last target token predicts nothing the losses read (``target_nll`` drops the last
    column) and, causally, changes no earlier position; its column (a target token) is left out
    unless the penalty could read it: SSS over ``tokens="all"`` counts it in its mean.
    """
    if prompt_only:
        return int(batch.prompt_lengths.max())
    length = batch.input_ids.shape[1]
    if regularizer is not None and regularizer.shortcuts().reads_target_positions:
        return length
    longest = int((batch.prompt_lengths + batch.target_lengths).max())
    return min(length, max(int(batch.prompt_lengths.max()), longest - 1))


def _full_step(model, batch, regularizer) -> Callable[[], StepResult]:
    def step():
        if regularizer is None:
            return model(**batch.model_inputs).logits, batch, None
        logits, _, penalty = regularizer.loss_and_penalty(model, batch)
        return logits, batch, penalty
    return step


def _cached_step(model, batch, objective, regularizer, lowest_block, projection=None) -> Callable[[], StepResult]:
    prompt_only = objective == "prompt_last" and (
        regularizer is None or regularizer.shortcuts().last_prompt_gradient_only)
    width = fed_width(batch, regularizer, prompt_only)
    leaf_at = graph_origin(regularizer, lowest_block)
    # The frozen part's graph is differentiated twice per step: its attention needs the kernels that allow it.
    with second_order_attention(model) if leaf_at is not None else contextlib.nullcontext():
        cache = BlockCache.capture(model, lowest_block, batch.input_ids[:, :width], batch.attention_mask[:, :width],
                                   leaf_at=leaf_at)
    head = frozen_head(model)
    target = regularizer.target if regularizer is not None else None
    token_mask = regularizer.token_mask(batch)[:, :width] if regularizer is not None else None
    tap = target if isinstance(target, int) and target > lowest_block else None
    columns, loss_batch = loss_columns(batch, prompt_only, width)

    def step():
        hidden, tapped = cache.run_blocks(cache.block_output(projection), lowest_block + 1, tap=tap)
        final = cache.final_hidden(hidden)
        logits = head(at_columns(final, columns))
        if regularizer is None:
            return logits, loss_batch, None
        embeddings = final if target == "last_hidden" else tapped if tap is not None else cache.leaf
        # Prompt only: J restricted to its one term with a gradient at the prompt (see above).
        loss = first_target_nll(logits, batch) if prompt_only else target_nll(logits, loss_batch)
        penalty = regularizer.penalty(loss, embeddings, token_mask)
        return logits, loss_batch, penalty

    return step


def loss_columns(batch: PairBatch, prompt_only: bool, width: int) -> Tuple[torch.Tensor, PairBatch]:
    """The columns whose logits a step computes, and the batch the loss reads those logits with."""
    if prompt_only:
        # One column per row, the last prompt position; prompt_last_nll reads column prompt_length - 1.
        columns = batch.last_prompt_positions.unsqueeze(1)
        return columns, dataclasses.replace(batch, prompt_lengths=torch.ones_like(batch.prompt_lengths))
    columns, loss_batch = target_window(batch)
    # A column past the fed width is the last one of its window, whose logits no loss reads.
    return columns.clamp_max(width - 1), loss_batch

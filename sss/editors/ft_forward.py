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
  target tokens after it cannot change the last prompt position's logits. The same holds with
  SSS on ``last_hidden`` over the prompt tokens (the default): of J's gradient there only the
  last prompt position's is non-zero (:func:`reads_last_prompt_gradient_only`), so J is replaced
  by its term for the first target token (:func:`first_target_nll`), which has that gradient;
* the LM head is read through a contiguous transposed copy (sss/editors/frozen_weights.py).

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

import contextlib
import dataclasses
import logging
from typing import Callable, Iterator, Optional, Tuple

import torch
from torch import nn

from .block_cache import BlockCache
from .frozen_weights import transposed
from ..data import PairBatch
from ..data.tokenize import IGNORE_INDEX
from ..losses import SSSRegularizer, SparsityRegularizer, target_nll

logger = logging.getLogger(__name__)

StepResult = Tuple[torch.Tensor, PairBatch, Optional[torch.Tensor]]  # logits, batch they match, penalty


@contextlib.contextmanager
def prepared_step(model, batch: PairBatch, objective: str, regularizer: Optional[SparsityRegularizer],
                  lowest_block: int) -> Iterator[Callable[[], StepResult]]:
    """Within the block, a function that runs one step's forward: ``() -> (logits, loss batch, penalty or None)``.

    Call it with only the trained weights requiring grad (FT-L's ``_train_only``): the LM head
    is then frozen and read through its transposed copy.
    """
    reason = full_path_reason(model, regularizer, lowest_block)
    if reason is not None:
        logger.debug("FT-L runs the full forward at every step: %s", reason)
        yield _full_step(model, batch, regularizer)
        return
    yield _cached_step(model, batch, objective, regularizer, lowest_block)


def reads_last_prompt_gradient_only(regularizer: Optional[SparsityRegularizer]) -> bool:
    """Whether the penalty needs J's gradient at each row's last prompt position and nowhere else.

    True for SSS on the LM head's input (``last_hidden``) over the prompt tokens: the logits at
    position i depend on the head's input at i alone, and J reads the logits at the positions
    that predict the target, so of the prompt positions only the last one has a non-zero
    gradient, ``-(1/T) d log p(first target token) / dx``. That position sees only the prompt.
    """
    if regularizer is None:
        return False
    kind = type(regularizer)
    return (regularizer.target == "last_hidden" and regularizer.tokens == "prompt"
            and kind.penalty is SSSRegularizer.penalty and kind.token_mask is SparsityRegularizer.token_mask)


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
    prompt_only = objective == "prompt_last" and (regularizer is None or reads_last_prompt_gradient_only(regularizer))
    width = int(batch.prompt_lengths.max()) if prompt_only else batch.input_ids.shape[1]
    cache = BlockCache.capture(model, lowest_block, batch.input_ids[:, :width], batch.attention_mask[:, :width])
    head = frozen_head(model)
    target = regularizer.target if regularizer is not None else None
    token_mask = regularizer.token_mask(batch)[:, :width] if regularizer is not None else None
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
        # Prompt only: J restricted to its one term with a gradient at the prompt (see above).
        loss = first_target_nll(logits, batch) if prompt_only else target_nll(logits, loss_batch)
        penalty = regularizer.penalty(loss, embeddings, token_mask)
        return logits, loss_batch, penalty

    return step


def first_target_nll(logits: torch.Tensor, batch: PairBatch) -> torch.Tensor:
    """J's term for the first target token, ``-log p(y_1 | prompt) / T``, per row. Shape [B].

    ``logits`` are ``[B, 1, V]`` at each row's last prompt position (``target_nll`` reads the
    same logits for the same label, divided by the same target length).
    """
    log_probs = torch.log_softmax(logits[:, 0].to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    first = batch.labels.gather(1, batch.prompt_lengths.unsqueeze(1))  # the token right after the prompt
    return -log_probs.gather(1, first).squeeze(1) / batch.target_lengths.to(log_probs.dtype)


def frozen_head(model) -> Callable[[torch.Tensor], torch.Tensor]:
    """The LM head as ``x @ W^T`` with a contiguous ``W^T`` when it is a frozen ``nn.Linear``.

    For the few rows a step reads, that layout's products (forward ``x @ W^T``, backward
    ``g @ W``) run ~40% faster than ``F.linear`` on the ``[V, H]`` weight; equal to rounding.
    """
    head = model.get_output_embeddings()
    frozen = type(head) is nn.Linear and not head.weight.requires_grad \
        and (head.bias is None or not head.bias.requires_grad)
    if not frozen:
        return head
    weight_t, bias = transposed(head.weight), head.bias
    return (lambda x: x @ weight_t) if bias is None else (lambda x: x @ weight_t + bias)


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

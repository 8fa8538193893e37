"""FT-L on many requests at once, each trained exactly as if it were edited alone.

Single-mode evaluation edits every request from the same unedited model and undoes it, so the
edits are independent; what makes them slow one at a time is the frozen part of the model: a
step of one CounterFact request feeds ~10 tokens through every block above the edited one, and
at so few rows a matmul runs well below the speed a core reaches on a hundred, while every step
pays its per-operation overhead once per call. :func:`train_each` stacks ``K`` requests into one
padded batch, so each step runs the frozen part once for all of them, and gives every request
its own copy of the trained projection (a ``[K, ...]`` stack; the edited block's output is a
batched matmul standing in for the projection in the cached step, :mod:`.cached_step`). What
it saves is measured by ``benchmarks/ftl_speed.py`` (figures in benchmarks/README.md).

Why this is the same computation as ``K`` separate edits:

* the loss is the *sum* of the per-request losses, and request ``k``'s loss depends on copy
  ``k`` only (its row reads only its own copy; rows do not interact: right padding, causal
  attention, eval mode), so copy ``k``'s gradient is exactly its own edit's gradient;
* Adam, the weight decay and the clamp to the ball are elementwise, so each copy follows its own
  edit's trajectory;
* early stopping is per request: a request whose loss falls below ``early_stop_loss`` keeps the
  weights it had at that step (Adam's momentum would otherwise still move them);
* only float rounding differs (batched matmuls sum in other orders): ``tests/test_ftl_parallel.py``
  compares with ``FTL.edit`` to 1e-12 in float64 on tiny-gpt2 and tiny-llama, both objectives.

Supported where the cached step (``sss.editors.ftl.cached_step``) is exact and the trained weights are
one projection: no regularizer (SSS's penalty is a batch-level quantity; those edits stay one at a
time), one edited block, modules in eval mode, an ``nn.Linear`` or GPT-2 ``Conv1D`` projection.
:func:`unsupported_reason` says why not otherwise, and ``FTL.edit_each`` then edits one at a time.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from ...data import EditRequest, encode_for
from ...losses import edit_loss
from ...models import mlp_out_path
from ..core.grad_flags import train_only
from ..core.interrupts import raise_if_interrupted
from .cached_step import full_path_reason, step_forward

TrainedEdit = Tuple[Dict[str, torch.Tensor], List[dict]]  # trained values by parameter name, loss history


def _projection_kind(module: nn.Module) -> Optional[str]:
    if type(module) is nn.Linear:
        return "linear"  # y = x W^T + b, W [out, in]
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):
        return "conv1d"  # GPT-2's: y = x W + b, W [in, out]
    return None


def unsupported_reason(editor) -> Optional[str]:
    """Why ``editor``'s edits cannot train together, or None when :func:`train_each` applies."""
    model = editor.base_model
    if editor.regularizer is not None:
        return "a regularizer is set (its penalty is computed over the whole batch)"
    if len(editor.config.layers) != 1:
        return "more than one block is edited"
    reason = full_path_reason(model, None, editor.config.layers[0])
    if reason is not None:
        return reason
    if _projection_kind(model.get_submodule(mlp_out_path(model, editor.config.layers[0]))) is None:
        return "the MLP output projection is neither nn.Linear nor GPT-2's Conv1D"
    return None


def train_each(editor, requests: List[EditRequest]) -> List[TrainedEdit]:
    """Train every request's edit as if alone, in one batch; the model is left as it was.

    Returns, per request, the trained values of ``editor.parameter_names`` and the loss history
    (``[{"step", "edit_loss"}, ...]``, as ``FTL.edit`` records it).
    """
    reason = unsupported_reason(editor)
    if reason is not None:
        raise ValueError(f"these FT-L edits cannot be trained together: {reason}")
    model, config = editor.base_model, editor.config
    layer = config.layers[0]
    projection = model.get_submodule(mlp_out_path(model, layer))
    kind = _projection_kind(projection)
    batch = encode_for(model, editor.tokenizer, [r.prompt for r in requests], [r.target_new for r in requests])
    count = len(requests)
    with train_only(model, []):  # every model weight frozen: the head is read through its transposed copy
        weights = projection.weight.detach().unsqueeze(0).repeat(count, 1, 1).requires_grad_(True)
        biases = None
        if projection.bias is not None:
            biases = projection.bias.detach().unsqueeze(0).repeat(count, 1).requires_grad_(True)
        trained = [weights] + ([biases] if biases is not None else [])

        def stacked_projection(inputs: torch.Tensor) -> torch.Tensor:  # [K, L, I] -> [K, L, O], row k by copy k
            out = torch.bmm(inputs, weights.transpose(1, 2) if kind == "linear" else weights)
            return out if biases is None else out + biases.unsqueeze(1)

        forward = step_forward(model, batch, config.objective, None, layer, projection=stacked_projection)

        def losses() -> torch.Tensor:
            logits, loss_batch, _ = forward()
            return edit_loss(logits, loss_batch, config.objective)

        histories = _optimise(losses, trained, [projection.weight, projection.bias][:len(trained)], config, count)
    names = editor.parameter_names  # weight, then bias where there is one (FTL._trained_parameter_names)
    return [({name: tensor[k].detach().clone() for name, tensor in zip(names, trained)}, histories[k])
            for k in range(count)]


def _optimise(step, trained, originals, config, count) -> List[List[dict]]:
    """FT-L's loop (``FTL._train``) over the stacks, with early stopping per request."""
    radius = config.norm_constraint
    optimizer = torch.optim.Adam(trained, lr=config.lr, weight_decay=config.weight_decay)
    with torch.no_grad():
        bounds = [(original.detach() - radius, original.detach() + radius) for original in originals]
    histories: List[List[dict]] = [[] for _ in range(count)]
    active = torch.ones(count, dtype=torch.bool)
    with torch.enable_grad():
        for step_index in range(config.steps):
            raise_if_interrupted()  # a safe point (nothing of the model is changed here)
            optimizer.zero_grad(set_to_none=True)
            losses = step()
            values = losses.detach().tolist()
            for k in active.nonzero().flatten().tolist():
                histories[k].append({"step": step_index, "edit_loss": values[k]})
            # As in FTL._train: a request below the threshold stops before this step's update.
            active &= ~(torch.tensor(values) < config.early_stop_loss)
            if not active.any():
                break
            stopped = (~active).nonzero().flatten().to(losses.device)
            kept = [tensor.detach()[stopped].clone() for tensor in trained]
            # Summed: request k's loss reads copy k only, so its gradient is that edit's own.
            losses[active.to(losses.device)].sum().backward(inputs=trained)
            optimizer.step()
            with torch.no_grad():
                for tensor, (low, high), frozen in zip(trained, bounds, kept):
                    tensor.clamp_(low, high)
                    tensor[stopped] = frozen  # stopped edits keep their weights (momentum would move them)
    return histories

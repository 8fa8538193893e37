"""The inner pass: each edited layer's input ``u`` and output gradient ``δ``, token by token.

For a linear layer ``y = W u`` the loss gradient is ``dL/dW = Σ_t δ_t u_tᵀ`` with
``δ_t = dL/dy_t``; MEND never forms it, it transforms the factors. Forward hooks keep the
layer's input and output (references, no copies); ``torch.autograd.grad`` with respect to the
outputs gives ``δ``.

Only what the factors need is computed: every base parameter is frozen for the pass (the edited
weights are passed to ``functional_call`` as fresh leaves, so the graph starts at the first
edited layer and nothing below it keeps activations or is reached by the backward). The LM head
runs only where a target token is predicted: for the architectures of
:mod:`sss.losses.head.gradient` the model body runs alone and the loss's gradient at those positions'
hidden states is formed in one pass over the head (:func:`nll_hidden_gradient`); for others the
whole model runs with its head on the tail of the sequence that holds the predictions
(``logits_to_keep``). Logits at other positions do not enter the loss, so neither path changes ``δ``.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.func import functional_call

from ...data import PairBatch
from ...losses import target_nll
from ..core.grad_flags import train_only
from ...losses.head import nll_hidden_gradient, split_head, target_tail


def _whole_model_loss(model: nn.Module, leaves: Dict[str, torch.Tensor], batch: PairBatch
                      ) -> Tuple[List[torch.Tensor], Optional[List[torch.Tensor]]]:
    """The inner loss through the whole model, its head on the target tail: ``([loss], None)``."""
    keep, tail = target_tail(batch)
    logits = functional_call(model, leaves, args=(), kwargs={**batch.model_inputs, "logits_to_keep": keep}).logits
    return [target_nll(logits, tail).mean()], None


def _hidden_and_gradient(split, leaves: Dict[str, torch.Tensor], batch: PairBatch
                         ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """``([h], [dL/dh])`` at the predicting positions' final hidden states, the head read once.

    The inner loss is ``target_nll(...).mean()``: position ``t - 1`` predicts the label at ``t``,
    each with weight ``1 / (B · target length of its row)``.
    """
    prefix, base, head = split
    inner = {name[len(prefix) + 1:]: leaf for name, leaf in leaves.items()}
    hidden = functional_call(base, inner, args=(), kwargs={**batch.model_inputs, "use_cache": False})[0]
    predicting = batch.target_mask[:, 1:].bool()
    rows, columns = predicting.nonzero(as_tuple=True)
    h = hidden[rows, columns]
    labels = batch.labels[:, 1:][predicting]
    row_weights = 1.0 / (len(batch) * batch.target_lengths[rows].to(h.dtype))
    with torch.no_grad():
        gradient = nll_hidden_gradient(h, head.weight, head.bias, labels, row_weights)
    return [h], [gradient]


def layer_factors(model: nn.Module, weights: Dict[str, torch.Tensor], batch: PairBatch
                  ) -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
    """``{weight name: (u [N, d_in], δ [N, d_out])}`` over the N real tokens of ``batch``.

    ``weights`` maps each edited parameter name (``"<module path>.weight"``) to the value to run
    it with. The inner loss is the mean over requests of each request's mean target NLL.
    Padding positions are dropped (their ``δ`` is zero but their ``u`` is not, and a transform
    could turn it into an update). Both factors are detached: MEND does not differentiate
    through the inner gradient.
    """
    captured: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = {}
    handles = []
    for name in weights:
        module = model.get_submodule(name.rsplit(".", 1)[0])
        handles.append(module.register_forward_hook(_keep(captured, name)))
    split = split_head(model)
    if split is not None and not all(name.startswith(split[0] + ".") for name in weights):
        split = None
    try:
        with train_only(model), torch.enable_grad():
            leaves = {name: value.detach().requires_grad_(True) for name, value in weights.items()}
            if split is None:
                outputs, grad_outputs = _whole_model_loss(model, leaves, batch)
            else:
                outputs, grad_outputs = _hidden_and_gradient(split, leaves, batch)
            missing = [name for name in weights if name not in captured]
            if missing:
                raise RuntimeError(f"the edited layers {missing} did not run in the forward pass")
            grads = torch.autograd.grad(outputs, [captured[name][1] for name in weights], grad_outputs=grad_outputs)
    finally:
        for handle in handles:
            handle.remove()
    real = batch.attention_mask.bool().reshape(-1)
    padded = not bool(real.all())  # without padding every row is kept: no copy
    factors = {}
    for name, grad in zip(weights, grads):
        u = captured[name][0].detach()
        u = u.reshape(-1, u.shape[-1])
        delta = grad.reshape(-1, grad.shape[-1])
        factors[name] = (u[real], delta[real]) if padded else (u, delta)
    return factors


def _keep(store: dict, name: str):
    def hook(module, args, output):
        if name in store:
            raise RuntimeError(f"{name} ran twice in one forward pass; MEND edits layers that run once")
        store[name] = (args[0], output)

    return hook


def factor_operands(u: torch.Tensor, delta: torch.Tensor, conv1d: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(a, b)`` with ``a @ b = Σ_t δ_t u_tᵀ`` laid out like the weight: [out, in] for ``nn.Linear``,
    [in, out] for ``Conv1D``; the tokens are the inner dimension (no per-token outer product)."""
    return (u.T, delta) if conv1d else (delta.T, u)


def factor_product(u: torch.Tensor, delta: torch.Tensor, conv1d: bool) -> torch.Tensor:
    """``Σ_t δ_t u_tᵀ`` laid out like the weight, as one matmul (:func:`factor_operands`)."""
    a, b = factor_operands(u, delta, conv1d)
    return a @ b

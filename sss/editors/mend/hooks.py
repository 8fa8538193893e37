"""The inner pass: each edited layer's input ``u`` and output gradient ``δ``, token by token.

For a linear layer ``y = W u`` the loss gradient is ``dL/dW = Σ_t δ_t u_tᵀ`` with
``δ_t = dL/dy_t``; MEND never forms it, it transforms the factors. Forward hooks keep the
layer's input and output; ``torch.autograd.grad`` with respect to the outputs gives ``δ``.
The edited weights are passed to ``functional_call`` as fresh leaves that require grad, so the
outputs are differentiable without touching any ``requires_grad`` flag of the model.
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple

import torch
from torch import nn
from torch.func import functional_call

from ...data import PairBatch


def layer_factors(model: nn.Module, weights: Dict[str, torch.Tensor], batch: PairBatch,
                  loss_fn: Callable[[torch.Tensor, PairBatch], torch.Tensor]
                  ) -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
    """``{weight name: (u [N, d_in], δ [N, d_out])}`` over the N real tokens of ``batch``.

    ``weights`` maps each edited parameter name (``"<module path>.weight"``) to the value to run
    it with; ``loss_fn(logits, batch)`` is the scalar inner loss. Padding positions are dropped
    (their ``δ`` is zero but their ``u`` is not, and a transform could turn it into an update).
    Both factors are detached: MEND does not differentiate through the inner gradient.
    """
    captured: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = {}
    handles = []
    for name in weights:
        module = model.get_submodule(name.rsplit(".", 1)[0])
        handles.append(module.register_forward_hook(_keep(captured, name)))
    try:
        with torch.enable_grad():
            leaves = {name: value.detach().requires_grad_(True) for name, value in weights.items()}
            logits = functional_call(model, leaves, args=(), kwargs=batch.model_inputs).logits
            loss = loss_fn(logits, batch)
            missing = [name for name in weights if name not in captured]
            if missing:
                raise RuntimeError(f"the edited layers {missing} did not run in the forward pass")
            outputs = [captured[name][1] for name in weights]
            grads = torch.autograd.grad(loss, outputs)
    finally:
        for handle in handles:
            handle.remove()
    real = batch.attention_mask.bool().reshape(-1)
    factors = {}
    for name, grad in zip(weights, grads):
        u = captured[name][0].detach()
        factors[name] = (u.reshape(-1, u.shape[-1])[real], grad.detach().reshape(-1, grad.shape[-1])[real])
    return factors


def _keep(store: dict, name: str):
    def hook(module, args, output):
        if name in store:
            raise RuntimeError(f"{name} ran twice in one forward pass; MEND edits layers that run once")
        store[name] = (args[0], output)

    return hook


def factor_product(u: torch.Tensor, delta: torch.Tensor, conv1d: bool) -> torch.Tensor:
    """``Σ_t δ_t u_tᵀ`` laid out like the weight: [out, in] for ``nn.Linear``, [in, out] for ``Conv1D``."""
    return u.T @ delta if conv1d else delta.T @ u

"""The inner pass: each edited layer's input ``u`` and output gradient ``δ``, token by token.

For a linear layer ``y = W u`` the loss gradient is ``dL/dW = Σ_t δ_t u_tᵀ`` with
``δ_t = dL/dy_t``; MEND never forms it, it transforms the factors. Forward hooks keep the
layer's input and output; ``torch.autograd.grad`` with respect to the outputs gives ``δ``.

Only what the factors need is computed: every base parameter is frozen for the pass (the edited
weights are passed to ``functional_call`` as fresh leaves, so the graph starts at the first
edited layer and nothing below it keeps activations), and the LM head runs only on the tail of
the sequence that holds the target predictions (``logits_to_keep``): the logits at the other
positions do not enter the loss, so their absence changes neither the loss nor ``δ``.
"""
from __future__ import annotations

import contextlib
from typing import Dict, Tuple

import torch
from torch import nn
from torch.func import functional_call

from ...data import PairBatch
from ...losses import target_nll


@contextlib.contextmanager
def frozen(model: nn.Module):
    """No base-model parameter requires grad inside the block; the flags come back on exit, even on errors."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def target_tail(batch: PairBatch) -> Tuple[int, PairBatch]:
    """``(k, tail)``: the last ``k`` positions hold every target prediction of ``batch``.

    The first target token of the row with the shortest prompt is predicted at its last prompt
    position, so the tail starts there. ``tail`` is ``batch`` cut to those positions (prompt
    lengths counted within the tail); ``target_nll(model(..., logits_to_keep=k).logits, tail)``
    equals ``target_nll(model(...).logits, batch)``.
    """
    length = batch.input_ids.shape[1]
    keep = length - int(batch.prompt_lengths.min()) + 1
    start = length - keep
    cut = {name: getattr(batch, name)[:, start:] for name in
           ("input_ids", "attention_mask", "labels", "prompt_mask", "target_mask")}
    return keep, PairBatch(**cut, prompt_lengths=batch.prompt_lengths - start, target_lengths=batch.target_lengths)


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
    keep, tail = target_tail(batch)
    try:
        with frozen(model), torch.enable_grad():
            leaves = {name: value.detach().requires_grad_(True) for name, value in weights.items()}
            logits = functional_call(model, leaves, args=(),
                                     kwargs={**batch.model_inputs, "logits_to_keep": keep}).logits
            loss = target_nll(logits, tail).mean()
            missing = [name for name in weights if name not in captured]
            if missing:
                raise RuntimeError(f"the edited layers {missing} did not run in the forward pass")
            grads = torch.autograd.grad(loss, [captured[name][1] for name in weights])
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


def factor_product(u: torch.Tensor, delta: torch.Tensor, conv1d: bool) -> torch.Tensor:
    """``Σ_t δ_t u_tᵀ`` laid out like the weight: [out, in] for ``nn.Linear``, [in, out] for ``Conv1D``.

    One matmul with the tokens as the inner dimension; no per-token outer product is formed.
    """
    return u.T @ delta if conv1d else delta.T @ u

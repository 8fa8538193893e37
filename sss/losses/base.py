"""The interface any sparsity penalty implements, and how it joins an editor's loss (Eq. 10)."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, Optional, Tuple

import torch
from torch import nn

from ..data import PairBatch, encode_pairs
from ..data.tokenize import context_length
from .edit import target_nll

TARGETS = ("last_hidden", "input_embeds")
TOKENS = ("prompt", "all")


def _check_option(value, allowed, name):
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(map(repr, allowed))}")


class SparsityRegularizer(ABC):
    """A penalty on how the edit loss reacts to the embeddings it was computed from.

    An editor runs its forward pass through :meth:`forward` (which exposes the embeddings named
    by ``target``), computes its per-example loss ``J``, and asks :meth:`penalty` for a scalar;
    :meth:`combine` then mixes it with the editor's own loss: ``(1 - C) * L_ori + C * penalty``.

    ``target``: ``"last_hidden"`` (the LM head's input, after the final norm) or
    ``"input_embeds"`` (what the first block receives). ``tokens``: which positions count,
    ``"prompt"`` or ``"all"`` (prompt and target).
    """

    needs_second_order = True

    def __init__(self, C: float = 0.9, target: str = "last_hidden", tokens: str = "prompt"):
        if not isinstance(C, (int, float)) or not 0.0 <= float(C) <= 1.0:
            raise ValueError(f"C must be a number in [0, 1], got {C!r}")
        _check_option(target, TARGETS, "target")
        _check_option(tokens, TOKENS, "tokens")
        self.C = float(C)
        self.target = target
        self.tokens = tokens

    @abstractmethod
    def penalty(self, loss: torch.Tensor, embeddings: torch.Tensor, token_mask: torch.Tensor, *,
                create_graph: bool = True) -> torch.Tensor:
        """Scalar penalty from per-example losses [B], embeddings [B, L, H] and a mask [B, L]."""

    def combine(self, loss_ori: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
        """Eq. 10: ``(1 - C) * L_ori + C * penalty``."""
        return (1.0 - self.C) * loss_ori + self.C * penalty

    def token_mask(self, batch: PairBatch) -> torch.Tensor:
        if self.tokens == "prompt":
            return batch.prompt_mask
        return batch.prompt_mask | batch.target_mask

    def forward(self, model: nn.Module, batch: PairBatch, call: Optional[Callable] = None
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Run ``model`` on ``batch`` and return ``(logits, embeddings)`` for this target."""
        return forward_with_embeddings(model, batch, self.target, call)

    def loss_and_penalty(self, model: nn.Module, batch: PairBatch, call: Optional[Callable] = None, *,
                         create_graph: bool = True) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(logits, J per example, penalty)`` from one forward pass."""
        logits, embeddings = self.forward(model, batch, call)
        loss = target_nll(logits, batch)
        return logits, loss, self.penalty(loss, embeddings, self.token_mask(batch), create_graph=create_graph)

    def score(self, model: nn.Module, tokenizer, prompt: str, target: str) -> float:
        """The penalty of one sentence, as a metric (no graph is kept)."""
        from ..models import second_order_attention  # noqa: local import keeps losses free of loaders

        device = next(model.parameters()).device
        batch = encode_pairs(tokenizer, [prompt], [target], max_length=context_length(tokenizer, model), device=device)
        with torch.enable_grad(), second_order_attention(model):
            _, _, value = self.loss_and_penalty(model, batch, create_graph=False)
        return float(value.detach())

    def describe(self) -> dict:
        return {"name": type(self).__name__, "C": self.C, "target": self.target, "tokens": self.tokens}

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.describe().items() if k != "name")
        return f"{type(self).__name__}({options})"


def forward_with_embeddings(model: nn.Module, batch: PairBatch, target: str, call: Optional[Callable] = None
                            ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Forward ``batch`` and return the logits with the embeddings the gradient is taken against.

    ``call`` runs the model on keyword inputs (default: ``model`` itself); editors that evaluate
    the model with edited weights (MEND's ``functional_call``) pass their own. For
    ``last_hidden`` the LM head's input is caught by a hook; when no parameter before it requires
    grad (scoring a frozen model) it is made a leaf so the gradient still exists.
    """
    _check_option(target, TARGETS, "target")
    call = call or model
    inputs = batch.model_inputs
    if target == "input_embeds":
        embeddings = model.get_input_embeddings()(batch.input_ids)
        if not embeddings.requires_grad:
            embeddings = embeddings.detach().requires_grad_(True)
        out = call(inputs_embeds=embeddings, attention_mask=inputs["attention_mask"])
        return out.logits, embeddings

    captured = []

    def take_head_input(module, args):
        hidden = args[0]
        if not hidden.requires_grad:
            hidden = hidden.detach().requires_grad_(True)
        captured.append(hidden)
        return (hidden,) + tuple(args[1:])

    hook = model.get_output_embeddings().register_forward_pre_hook(take_head_input)
    try:
        out = call(**inputs)
    finally:
        hook.remove()
    if len(captured) != 1:
        raise RuntimeError(f"expected the LM head to run once, it ran {len(captured)} times")
    return out.logits, captured[0]

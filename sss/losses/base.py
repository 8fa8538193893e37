"""The interface any sparsity penalty implements, and how it joins an editor's loss (Eq. 10)."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Optional, Tuple, Union

import torch
from torch import nn

from ..data import PairBatch, encode_for
from ..models import layout_of, num_blocks
from .edit import target_nll

TARGETS = ("last_hidden", "input_embeds")
TOKENS = ("prompt", "all")
Target = Union[str, int]


def _check_option(value, allowed, name):
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(map(repr, allowed))}")


def normalize_target(target) -> Target:
    """``"last_hidden"``, ``"input_embeds"``, or a block index (an int, or a string of digits from a CLI).

    A block index ``k`` names the residual stream entering block ``k`` (its input hidden states);
    whether ``k`` exists is checked against the model when the forward pass runs.
    """
    if isinstance(target, str) and target.isdigit():
        return int(target)
    if isinstance(target, int) and not isinstance(target, bool):
        if target < 0:
            raise ValueError(f"target block index must be >= 0, got {target}")
        return target
    if isinstance(target, str) and target in TARGETS:
        return target
    raise ValueError(f"unknown target {target!r}; choose one of {', '.join(map(repr, TARGETS))} "
                     "or a block index (0, 1, ...)")


def check_C(C) -> float:
    """The mixing weight of Eq. 10: a real number in [0, 1] (a bool is a mistake, not 0 or 1)."""
    if isinstance(C, bool) or not isinstance(C, (int, float)) or not 0.0 <= float(C) <= 1.0:
        raise ValueError(f"C must be a number in [0, 1], got {C!r}")
    return float(C)


@dataclass(frozen=True)
class Shortcuts:
    """What an editor may skip or narrow when it computes a regularizer's inputs itself.

    A regularizer declares these (:meth:`SparsityRegularizer.shortcuts`); editors ask, they never
    inspect its class.

    ``own_forward``: the logits, the embeddings at ``target`` and ``J`` may be computed any way
    that gives :meth:`SparsityRegularizer.loss_and_penalty`'s values (the LM head on the columns
    ``J`` reads, a cached frozen part); False for a regularizer with a forward of its own.
    ``gradient_positions``: the penalty depends on ``J`` only through ``dJ/d(embeddings)`` at
    these positions (``"prompt"`` or ``"all"``: prompt and target), or None when it may read ``J``
    some other way. ``target``: where the embeddings are taken.
    """

    own_forward: bool
    gradient_positions: Optional[str]
    target: "Target"

    @property
    def last_prompt_gradient_only(self) -> bool:
        """Whether the penalty needs ``J``'s gradient at each row's last prompt position and nowhere else.

        True for a gradient over the prompt tokens at the LM head's input (``last_hidden``): the
        logits at position i depend on the head's input at i alone, and ``J`` reads the logits
        that predict the target, so of the prompt positions only the last has a non-zero
        gradient, ``-(1/T) d log p(first target token) / dx``: ``J`` may then be replaced by
        ``first_target_nll``, and that position sees only the prompt.
        """
        return self.own_forward and self.target == "last_hidden" and self.gradient_positions == "prompt"

    @property
    def reads_target_positions(self) -> bool:
        """Whether the penalty may read anything at target positions (so they must be fed)."""
        return self.gradient_positions != "prompt"


class SparsityRegularizer(ABC):
    """A penalty on how the edit loss reacts to the embeddings it was computed from.

    An editor runs its forward pass through :meth:`forward` (which exposes the embeddings named
    by ``target``), computes its per-example loss ``J``, and asks :meth:`penalty` for a scalar;
    :meth:`combine` then mixes it with the editor's own loss: ``(1 - C) * L_ori + C * penalty``.

    ``target``: ``"last_hidden"`` (the LM head's input, after the final norm),
    ``"input_embeds"`` (what the first block receives), or a block index ``k`` (the hidden states
    entering block ``k``; docs/sss.md compares the three). ``tokens``: which positions count,
    ``"prompt"`` or ``"all"`` (prompt and target).

    Every editor that takes a regularizer differentiates through :meth:`penalty`, a gradient, so
    all of them run second order; there is no first-order flag to consult.
    """

    def __init__(self, C: float = 0.9, target: Target = "last_hidden", tokens: str = "prompt"):
        self.C = check_C(C)
        self.target = normalize_target(target)
        _check_option(tokens, TOKENS, "tokens")
        self.tokens = tokens

    @abstractmethod
    def penalty(self, loss: torch.Tensor, embeddings: torch.Tensor, token_mask: torch.Tensor, *,
                create_graph: bool = True) -> torch.Tensor:
        """Scalar penalty from per-example losses [B], embeddings [B, L, H] and a mask [B, L]."""

    def combine(self, loss_ori: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
        """Eq. 10: ``(1 - C) * L_ori + C * penalty``."""
        return (1.0 - self.C) * loss_ori + self.C * penalty

    def shortcuts(self) -> Shortcuts:
        """What editors may skip or narrow (see :class:`Shortcuts`).

        The base class promises the least it can: its forward is the standard one unless a
        subclass overrides ``forward`` or ``loss_and_penalty``, but an arbitrary ``penalty`` may
        read ``J`` in any way. A subclass whose penalty reads only ``dJ/dx`` at the token mask's
        positions says so by overriding this (as :class:`~sss.losses.SSSRegularizer` does).
        """
        return Shortcuts(own_forward=_standard_forward(type(self)), gradient_positions=None, target=self.target)

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

        batch = encode_for(model, tokenizer, [prompt], [target])
        with torch.enable_grad(), second_order_attention(model):
            _, _, value = self.loss_and_penalty(model, batch, create_graph=False)
        return float(value.detach())

    def describe(self) -> dict:
        return {"name": type(self).__name__, "C": self.C, "target": self.target, "tokens": self.tokens}

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.describe().items() if k != "name")
        return f"{type(self).__name__}({options})"


def _standard_forward(kind: type) -> bool:
    """Whether a regularizer class computes its logits, embeddings and J as the base class does
    (a subclass overriding ``forward`` or ``loss_and_penalty`` owns its computation)."""
    return kind.forward is SparsityRegularizer.forward and kind.loss_and_penalty is SparsityRegularizer.loss_and_penalty


def forward_with_embeddings(model: nn.Module, batch: PairBatch, target: str, call: Optional[Callable] = None
                            ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Forward ``batch`` and return the logits with the embeddings the gradient is taken against.

    ``call`` runs the model on keyword inputs (default: ``model`` itself); editors that evaluate
    the model with edited weights (MEND's ``functional_call``) pass their own. For
    ``last_hidden`` the LM head's input, and for a block index ``k`` block ``k``'s input hidden
    states, are caught by a forward pre-hook; when no parameter before that point requires grad
    (scoring a frozen model) the caught tensor is made a leaf so the gradient still exists.
    """
    target = normalize_target(target)
    call = call or model
    inputs = batch.model_inputs
    if target == "input_embeds":
        embeddings = model.get_input_embeddings()(batch.input_ids)
        if not embeddings.requires_grad:
            embeddings = embeddings.detach().requires_grad_(True)
        out = call(inputs_embeds=embeddings, attention_mask=inputs["attention_mask"])
        return out.logits, embeddings

    captured = []

    def take_input(module, args, kwargs):
        in_args = bool(args)
        hidden = args[0] if in_args else kwargs["hidden_states"]
        if not hidden.requires_grad:
            hidden = hidden.detach().requires_grad_(True)
        captured.append(hidden)
        if in_args:
            return (hidden,) + tuple(args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    hooked = model.get_output_embeddings() if target == "last_hidden" else _block(model, target)
    # with_kwargs: decoder blocks may receive their hidden states as a keyword argument
    hook = hooked.register_forward_pre_hook(take_input, with_kwargs=True)
    try:
        out = call(**inputs)
    finally:
        hook.remove()
    if len(captured) != 1:
        raise RuntimeError(f"expected the hooked module ({target!r}) to run once, it ran {len(captured)} times")
    return out.logits, captured[0]


def _block(model: nn.Module, index: int) -> nn.Module:
    blocks = model.get_submodule(layout_of(model).blocks)
    if index >= len(blocks):
        raise ValueError(f"target block {index} is out of range for a model with {num_blocks(model)} blocks")
    return blocks[index]

"""The Semantic Sparse Space penalty (Eq. 9 of the paper).

``SSS = (1/m) * sum_i ||dJ/dx_i||^2`` over the ``m`` counted tokens of each example, where
``J`` is the example's mean target NLL and ``x_i`` its embedding at token ``i``; averaged over
the batch. A small SSS means the loss barely moves when the embeddings are perturbed: the
example sits in a semantically sparse region.

Where ``x`` lives matters (docs/sss.md compares the readings): the default ``last_hidden`` is the LM head's input, as in
the authors' released code. Teacher forcing makes the logits at position ``t`` depend on the
last hidden state at ``t`` only, so with ``tokens="prompt"`` the only non-zero prompt gradient is
the last prompt token's, divided by the prompt length. ``input_embeds`` sees every prompt token
but is roughly 20x larger than ``J`` on SmolLM2-135M and, at C = 0.9, stops FT-L's edit. A block
index ``k`` (the residual stream entering block ``k``) lies between the two.
"""
from __future__ import annotations

import torch

from .base import Shortcuts, SparsityRegularizer, Target

REDUCTIONS = ("mean", "sum")


class SSSRegularizer(SparsityRegularizer):
    """``SSSRegularizer(C=0.9, target="last_hidden", tokens="prompt", reduction="mean")``.

    ``reduction``: ``"mean"`` divides each example's sum by its token count (the paper's 1/m);
    ``"sum"`` does not (the released code).
    """

    def __init__(self, C: float = 0.9, target: Target = "last_hidden", tokens: str = "prompt",
                 reduction: str = "mean"):
        super().__init__(C=C, target=target, tokens=tokens)
        if reduction not in REDUCTIONS:
            raise ValueError(f"unknown reduction {reduction!r}; choose one of {', '.join(map(repr, REDUCTIONS))}")
        self.reduction = reduction

    def penalty(self, loss, embeddings, token_mask, *, create_graph: bool = True):
        # Rows of a batch do not interact, so the gradient of the summed losses gives every
        # example's own dJ_b/dx_b in one backward pass.
        (grads,) = torch.autograd.grad(loss.sum(), embeddings, create_graph=create_graph)
        mask = token_mask.to(grads.dtype)
        per_token = grads.pow(2).sum(-1) * mask  # [B, L]
        per_example = per_token.sum(-1)
        if self.reduction == "mean":
            per_example = per_example / mask.sum(-1).clamp_min(1.0)
        return per_example.mean()

    def shortcuts(self) -> Shortcuts:
        """SSS reads ``J`` only through its gradient at the counted tokens (Eq. 9), as long as
        neither the penalty nor the token mask is replaced by a subclass."""
        base = super().shortcuts()
        kind = type(self)
        own = kind.penalty is SSSRegularizer.penalty and kind.token_mask is SparsityRegularizer.token_mask
        return Shortcuts(own_forward=base.own_forward, gradient_positions=self.tokens if own else None,
                         target=self.target)

    def describe(self) -> dict:
        return super().describe() | {"reduction": self.reduction}

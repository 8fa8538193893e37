"""The rank-one update ROME writes."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import torch

__all__ = ["RankOneUpdate"]


@dataclass
class RankOneUpdate:
    """``W' = W + right uᵀ`` (``u`` along the key side): ``W' key = target``; ``x`` with ``uᵀx = 0`` unchanged."""

    layer: int
    key: torch.Tensor  # the key at the subject's last token of the prompt
    averaged_key: torch.Tensor  # k*: the key averaged over the sampled prefixes
    value: torch.Tensor  # the MLP output there before the edit
    target: torch.Tensor  # v*
    u: torch.Tensor
    right: torch.Tensor
    history: List[dict] = field(default_factory=list)
    transposed: bool = False  # GPT-2's Conv1D keeps its weight as [in, out]

    def matrix(self) -> torch.Tensor:
        """The update in the weight's own layout."""
        outer = torch.outer(self.right, self.u)  # [out, in]
        return outer.T if self.transposed else outer

    def apply(self, projection) -> None:
        with torch.no_grad():
            projection.weight.add_(self.matrix().to(projection.weight.dtype))

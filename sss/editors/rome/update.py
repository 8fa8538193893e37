"""The rank-one update ROME writes, and the keys it is computed from."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Sequence

import torch

from .subject import subject_last_index

__all__ = ["RankOneUpdate", "keys_at"]


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


def keys_at(model, tokenizer, projection, texts: Sequence[str], subject: str) -> torch.Tensor:
    """The projection's input at the subject's last token of each text: ``[len(texts), d_k]``."""
    encoded = [tokenizer(text, add_special_tokens=True)["input_ids"] for text in texts]
    positions = [subject_last_index(tokenizer, text, subject, max(text.rfind(subject), 0)) for text in texts]
    width = max(len(ids) for ids in encoded)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    ids = torch.full((len(texts), width), pad, dtype=torch.long, device=device)
    mask = torch.zeros((len(texts), width), dtype=torch.long, device=device)
    for row, row_ids in enumerate(encoded):
        ids[row, :len(row_ids)] = torch.tensor(row_ids, device=device)
        mask[row, :len(row_ids)] = 1
    taken = []
    hook = projection.register_forward_pre_hook(lambda _m, args: taken.append(args[0].detach()))
    try:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask, use_cache=False)
    finally:
        hook.remove()
    return taken[0][torch.arange(len(texts), device=device), torch.tensor(positions, device=device)]

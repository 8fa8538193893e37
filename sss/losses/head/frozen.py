"""A contiguous ``W^T`` of a weight that stays frozen for a whole edit (FT-L's LM head).

Why: at FT-L's sequence lengths (5-20 tokens) a step reads the LM head at one row per request,
a ``[1, H] x [H, V]`` product over the whole vocabulary, forward and backward. PyTorch's CPU
kernel for ``F.linear`` on the ``[V, H]`` weight is markedly slower there than the product with
a contiguous ``[H, V]`` copy (forward ``x @ W^T``, backward ``g @ W`` as its transposed view;
the figures are in benchmarks/README.md). Equal to ``F.linear`` to float rounding (another
summation order), not bit for bit.

The copy is kept per weight while its storage and version counter are unchanged (the head is
frozen edit after edit, so it is made once per process) and dropped when the weight is freed.
"""
from __future__ import annotations

import weakref
from typing import Dict, Tuple

import torch

# id(weight) -> (weakref to it, (data_ptr, version) when the copy was made, the copy)
_TRANSPOSED: Dict[int, Tuple[weakref.ref, tuple, torch.Tensor]] = {}


def transposed(weight: torch.Tensor) -> torch.Tensor:
    """A contiguous ``weight.t()`` that never requires grad (for frozen weights only), reused
    while the weight's storage and version counter are unchanged."""
    if weight.requires_grad:
        raise ValueError("transposed() is for frozen weights; this one requires grad")
    key, stamp = id(weight), (weight.data_ptr(), weight._version)
    entry = _TRANSPOSED.get(key)
    if entry is not None and entry[0]() is weight and entry[1] == stamp:
        return entry[2]
    with torch.no_grad():
        copy = weight.detach().t().contiguous()
    if entry is None or entry[0]() is not weight:
        # The copy goes when the weight goes (a model deleted in a long-running study).
        weakref.finalize(weight, _TRANSPOSED.pop, key, None)
    _TRANSPOSED[key] = (weakref.ref(weight), stamp, copy)
    return copy

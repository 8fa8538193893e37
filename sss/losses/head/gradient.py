"""The inner loss's gradient at the final hidden states, reading the LM head once.

MEND's inner pass needs ``dL/dh`` at the positions that predict a target token, never the loss
or the logits themselves. Through autograd the vocabulary-wide head is read twice (``h Wᵀ``
forward, ``(p − y) W`` backward); at a few tokens per edit both are bound by reading ``W``
(49152 × 576 for SmolLM2, a third of the model), so one pass saves a full read.

For position ``p`` with label ``y_p`` and weight ``w_p`` the gradient of
``Σ_p w_p · (−log softmax(h_p Wᵀ + b)[y_p])`` is ``w_p · (softmax(h_p Wᵀ + b) W − W[y_p])``. The
vocabulary is walked in cache-sized chunks with a running maximum (the online softmax): each
chunk's logits and its share of ``softmax · W`` are formed while the chunk is in cache. The
result equals autograd's to float rounding (tests/test_mend_fast.py).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from ...models import backbone

# Bytes of the head per chunk on the CPU: 512 × 576 floats (1.2 MB) stay in a core's cache while
# both of the chunk's matmuls read them. On an accelerator a few large chunks (fewer launches).
CPU_CHUNK_BYTES = 512 * 576 * 4
ACCELERATOR_CHUNK_ROWS = 8192


def split_head(model: nn.Module):
    """``(prefix, base, head)`` when ``model``'s logits are ``head(base(...)[0])`` with ``base`` the
    submodule at ``prefix`` (``sss.models.backbone``) and ``head`` a plain ``nn.Linear``; None for
    anything else (the caller then runs the whole model)."""
    base = backbone(model)
    head = model.get_output_embeddings() if base is not None else None
    if type(head) is not nn.Linear:
        return None
    return model.base_model_prefix, base, head


def nll_hidden_gradient(hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                        labels: torch.Tensor, row_weights: torch.Tensor) -> torch.Tensor:
    """``d/dh Σ_p w_p·(−log softmax(h_p Wᵀ + b)[y_p])`` for ``hidden`` [P, D]; returns [P, D].

    ``weight`` [V, D] and ``bias`` [V] (or None) are the head's; ``labels`` [P] the predicted
    tokens; ``row_weights`` [P] the ``w_p``. Computed in at least float32 (as the losses are).

    The gradient is accumulated as ``Σ_{v≠y} p_v (W_v − W_y)``: the label's own term is left out
    of the sums, so a confident prediction (``p_y`` near 1) does not subtract two nearly equal
    vectors (``softmax · W ≈ W_y``) and lose the digits of their small difference. Each chunk's
    share is a plain matmul added to the running sum, not ``addmm`` into it and not one matmul
    over the whole vocabulary: on the CPU both of those accumulate a single row's long sums with
    ~100× the rounding error (measured on SmolLM2: the result is then further from float64 than
    autograd's, whose backward is one such long matmul; chunked, it is ~20× closer).
    """
    dtype = torch.promote_types(hidden.dtype, torch.float32)
    h = hidden.detach().to(dtype)
    rows, vocab = h.shape[0], weight.shape[0]
    if weight.device.type == "cpu":
        chunk = max(1, CPU_CHUNK_BYTES // (weight.shape[1] * weight.element_size()))
    else:
        chunk = ACCELERATOR_CHUNK_ROWS
    hits: Dict[int, Tuple[List[int], List[int]]] = {}  # chunk index -> (rows, columns) of labels in it
    for row, label in enumerate(labels.tolist()):
        index, column = divmod(label, chunk)
        hits.setdefault(index, ([], []))[0].append(row)
        hits[index][1].append(column)
    running_max = torch.full((rows, 1), -float("inf"), dtype=dtype, device=h.device)
    others = torch.zeros((rows, 1), dtype=dtype, device=h.device)  # Σ_{v≠y} exp(l_v − max)
    weighted = torch.zeros_like(h)  # Σ_{v≠y} exp(l_v − max) W_v
    for start in range(0, vocab, chunk):
        w_chunk = weight[start:start + chunk].to(dtype)
        logits = h @ w_chunk.T
        if bias is not None:
            logits = logits + bias[start:start + chunk].to(dtype)
        new_max = torch.maximum(running_max, logits.amax(-1, keepdim=True))
        rescale = torch.exp(running_max - new_max)
        exp = torch.exp(logits - new_max)
        hit = hits.get(start // chunk)
        if hit is not None:
            exp[hit] = 0.0
        others = others * rescale + exp.sum(-1, keepdim=True)
        weighted = weighted * rescale + exp @ w_chunk
        running_max = new_max
    label_rows = weight[labels].to(dtype)
    label_logits = (h * label_rows).sum(-1, keepdim=True)
    if bias is not None:
        label_logits = label_logits + bias[labels].to(dtype).unsqueeze(-1)
    normaliser = others + torch.exp(label_logits - running_max)
    grad = (weighted - others * label_rows) / normaliser
    return (grad * row_weights.to(dtype).unsqueeze(-1)).to(hidden.dtype)

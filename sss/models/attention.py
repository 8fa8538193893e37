"""Second-order gradients through attention (SSS differentiates a gradient)."""
from __future__ import annotations

import contextlib

from torch import nn

__all__ = ["second_order_attention"]


@contextlib.contextmanager
def second_order_attention(model: nn.Module):
    """Run attention with kernels whose backward is itself differentiable.

    PyTorch's fused CPU attention has no double backward, so SSS (a gradient of a gradient)
    fails inside it. The math SDPA kernel is composed of ordinary ops and supports it; models
    loaded with another implementation (e.g. flash-attention) are switched to eager for the
    duration and switched back afterwards.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    config = getattr(model, "config", None)
    current = getattr(config, "_attn_implementation", None)
    switched = current not in (None, "eager", "sdpa") and hasattr(model, "set_attn_implementation")
    if switched:
        model.set_attn_implementation("eager")
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        if switched:
            model.set_attn_implementation(current)

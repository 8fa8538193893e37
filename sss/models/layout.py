"""Where each architecture keeps the parts that editors touch.

Nothing else in sss names a module path: editors ask :func:`layout_of` where blocks, MLP
weights, the final norm and the embeddings live.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from torch import nn

__all__ = ["ARCHITECTURES", "ModelLayout", "backbone", "is_conv1d", "layout_of", "mlp_in_paths", "mlp_out_path",
           "num_blocks"]


@dataclass(frozen=True)
class ModelLayout:
    """Where an architecture keeps what editors need (dotted paths from the CausalLM)."""

    blocks: str  # the ModuleList of transformer blocks
    mlp_in: Tuple[str, ...]  # MLP input projection(s), relative to one block
    mlp_out: str  # MLP output projection, relative to one block
    final_norm: str
    embedding: str


_GPT2 = ModelLayout("transformer.h", ("mlp.c_fc",), "mlp.c_proj", "transformer.ln_f", "transformer.wte")
_GPT_NEO = ModelLayout("transformer.h", ("mlp.c_fc",), "mlp.c_proj", "transformer.ln_f", "transformer.wte")
_GPTJ = ModelLayout("transformer.h", ("mlp.fc_in",), "mlp.fc_out", "transformer.ln_f", "transformer.wte")
_LLAMA = ModelLayout("model.layers", ("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj", "model.norm",
                     "model.embed_tokens")

ARCHITECTURES: Dict[str, ModelLayout] = {
    "gpt2": _GPT2,
    "gpt_neo": _GPT_NEO,
    "gptj": _GPTJ,
    "llama": _LLAMA,  # also SmolLM2
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
}


def layout_of(model: nn.Module) -> ModelLayout:
    """The layout of ``model``'s architecture; an unknown one is a ``ValueError`` listing the known."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {model_type!r}; sss knows: {', '.join(sorted(ARCHITECTURES))}. "
                         "Add a ModelLayout to sss.models.ARCHITECTURES to support it.")
    return ARCHITECTURES[model_type]


def backbone(model: nn.Module) -> Optional[nn.Module]:
    """The module whose ``last_hidden_state`` is ``model``'s LM-head input, or None when unknown.

    For the architectures of :data:`ARCHITECTURES` the causal LM's logits are
    ``lm_head(backbone(...).last_hidden_state)`` and nothing more (no logit scaling or
    soft-capping), so an editor may run the backbone and apply the head where it reads it.
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    inner = getattr(model, "base_model", None)
    if model_type not in ARCHITECTURES or inner is None or inner is model:
        return None
    return inner


def num_blocks(model: nn.Module) -> int:
    return len(model.get_submodule(layout_of(model).blocks))


def _block_index(model: nn.Module, layer: int) -> int:
    n = num_blocks(model)
    index = layer + n if layer < 0 else layer
    if not 0 <= index < n:
        raise ValueError(f"layer {layer} is out of range for a model with {n} blocks")
    return index


def mlp_out_path(model: nn.Module, layer: int) -> str:
    """Dotted module path of the MLP output projection of block ``layer`` (negative counts back)."""
    layout = layout_of(model)
    return f"{layout.blocks}.{_block_index(model, layer)}.{layout.mlp_out}"


def mlp_in_paths(model: nn.Module, layer: int) -> List[str]:
    layout = layout_of(model)
    return [f"{layout.blocks}.{_block_index(model, layer)}.{p}" for p in layout.mlp_in]


def is_conv1d(module: nn.Module) -> bool:
    """GPT-2's ``Conv1D`` stores its weight as [in, out], transposed from ``nn.Linear``'s [out, in]."""
    return type(module).__name__ == "Conv1D"

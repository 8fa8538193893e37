"""MEMIT's hyper-parameters: the original's for GPT-2 XL (Meng et al. 2023, ``hparams/MEMIT/gpt2-xl.json``),
the edited blocks given per architecture as fractions of the depth."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from ..core.config import require_real
from ..core.locate import LocateThenEditConfig

__all__ = ["ARCH_DEFAULTS", "MEMITConfig"]

# (first and last edited block as fractions of blocks - 1, mom2_update_weight): GPT-2 XL's blocks 13-17
# of 48 and λ = 20000 in the original; LLaMA's 4-8 of 32 in EasyEdit's hparams. EasyEdit's λ for
# LLaMA-7B, 15000, left SmolLM2's edits unwritten (docs/rome.md: first-token reliability 0.2 of 5
# requests, 1.0 at 1500 and at 150), so the Llama family's default is 1500; pass 15000 to match EasyEdit.
ARCH_DEFAULTS: Dict[str, Tuple[Tuple[float, float], float]] = {
    "gpt2": ((13 / 47, 17 / 47), 20000.0), "gpt_neo": ((13 / 47, 17 / 47), 20000.0),
    "gptj": ((3 / 27, 8 / 27), 15000.0), "llama": ((4 / 31, 8 / 31), 1500.0), "mistral": ((4 / 31, 8 / 31), 1500.0),
    "qwen2": ((4 / 31, 8 / 31), 1500.0), "qwen3": ((4 / 31, 8 / 31), 1500.0)}


@dataclass
class MEMITConfig(LocateThenEditConfig):
    """``layers``: the blocks whose MLP output projections share each edit (None: the architecture's).

    The value search (``v_steps`` ... ``early_stop_loss``) is ROME's, on the residual stream after
    the last edited block; ``mom2_update_weight``: λ in ``(λC + KᵀK)⁻¹`` (None: the architecture's);
    ``context_templates``: ``(length, count)`` of prefixes sampled from each of five starts.
    """

    clamp_norm_factor: float = 0.75
    context_templates: Tuple[Tuple[int, int], ...] = ((10, 1),)
    mom2_update_weight: Optional[float] = None

    def __post_init__(self):
        super().__post_init__()
        if self.mom2_update_weight is not None:
            require_real("mom2_update_weight", self.mom2_update_weight, positive=True, extra=" (or None)")

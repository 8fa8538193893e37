"""FT-L's hyper-parameters and their per-architecture defaults."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from ..core.config import EditorConfig, block_list, require_positive_integer, require_real

OBJECTIVES = ("prompt_last", "target_new")

# Per-architecture defaults for the fields left as None. The block is given as a fraction of the
# depth so that one entry serves every size of a family. GPT-2: the paper's GPT-2 XL setting
# (block 0, radius 5e-4). Llama family (SmolLM2-135M: block 10 of 30): see docs/ftl.md; radius
# 5e-4 cannot flip a fact there in 25 steps, 5e-3 does.
ARCH_DEFAULTS: Dict[str, dict] = {
    "gpt2": {"depth_fraction": 0.0, "norm_constraint": 5e-4},
    "gpt_neo": {"depth_fraction": 0.0, "norm_constraint": 5e-4},
    "gptj": {"depth_fraction": 0.0, "norm_constraint": 5e-4},
    "llama": {"depth_fraction": 1 / 3, "norm_constraint": 5e-3},
    "mistral": {"depth_fraction": 1 / 3, "norm_constraint": 5e-3},
    "qwen2": {"depth_fraction": 1 / 3, "norm_constraint": 5e-3},
    "qwen3": {"depth_fraction": 1 / 3, "norm_constraint": 5e-3},
}


@dataclass
class FTLConfig(EditorConfig):
    """FT-L's hyper-parameters (EasyEdit defaults). ``None`` means: the architecture's default."""

    layers: Optional[Tuple[int, ...]] = None
    norm_constraint: Optional[float] = None
    lr: float = 5e-4
    steps: int = 25
    weight_decay: float = 0.0
    early_stop_loss: float = 1e-2
    objective: str = "prompt_last"

    def __post_init__(self):
        if not isinstance(self.objective, str) or self.objective not in OBJECTIVES:
            raise ValueError(f"unknown FT-L objective {self.objective!r}; choose one of {', '.join(OBJECTIVES)}")
        require_positive_integer("steps", self.steps)
        require_real("lr", self.lr, positive=True)
        require_real("weight_decay", self.weight_decay, minimum=0.0)
        require_real("early_stop_loss", self.early_stop_loss)  # negative: never stop early
        if self.norm_constraint is not None:
            require_real("norm_constraint", self.norm_constraint, positive=True, extra=" (or None for the default)")
        if self.layers is not None:
            self.layers = block_list(self.layers)

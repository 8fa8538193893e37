"""ROME's hyper-parameters: the original's for GPT-2 XL (Meng et al. 2022, ``hparams/ROME/gpt2-xl.json``),
the edited block given per architecture as a fraction of the depth."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from ..core.config import EditorConfig, block_list, is_integer, require_bool, require_positive_integer, require_real

__all__ = ["ARCH_DEFAULTS", "ROMEConfig"]

# The block ROME edits when ``layers`` is None, as a fraction of (blocks - 1): GPT-2 XL's block 17
# of 48 in the original; GPT-J's 5 of 28 and LLaMA-7B's 5 of 32 in EasyEdit's hparams.
ARCH_DEFAULTS: Dict[str, float] = {"gpt2": 17 / 47, "gpt_neo": 17 / 47, "gptj": 5 / 27, "llama": 5 / 31,
                                   "mistral": 5 / 31, "qwen2": 5 / 31, "qwen3": 5 / 31}


@dataclass
class ROMEConfig(EditorConfig):
    """``layers``: the block(s) whose MLP output projection is rewritten (None: the architecture's).

    ``v_steps``, ``v_lr``: Adam on the value ``v*`` (the MLP output at the subject's last token);
    ``v_weight_decay``: ``||δ|| / ||v||²`` in its loss; ``clamp_norm_factor``: ``||δ|| <= factor * ||v||``;
    ``kl_factor``: the KL "essence" term on ``"{subject} is a"``; ``early_stop_loss``: stop once the
    loss is below it. ``mom2_adjustment``: weigh the update by ``C⁻¹`` (the key statistics of
    ``sss.stats``, over ``stats_tokens`` tokens of ``stats_corpus``; None: 10 x the key width).
    ``context_templates``: ``(length, count)`` pairs of prefixes the model samples (seeded by
    ``template_seed``) that ``k*`` is averaged over and ``v*`` is optimised under.
    """

    layers: Optional[Tuple[int, ...]] = None
    v_steps: int = 20
    v_lr: float = 0.5
    v_weight_decay: float = 0.5
    clamp_norm_factor: float = 4.0
    kl_factor: float = 0.0625
    early_stop_loss: float = 0.05
    mom2_adjustment: bool = True
    stats_corpus: str = "model-samples"
    stats_tokens: Optional[int] = None
    context_templates: Tuple[Tuple[int, int], ...] = ((5, 10), (10, 10))
    template_seed: int = 0

    def __post_init__(self):
        if self.layers is not None:
            self.layers = block_list(self.layers)
        require_positive_integer("v_steps", self.v_steps)
        require_real("v_lr", self.v_lr, positive=True)
        for name in ("v_weight_decay", "kl_factor"):
            require_real(name, getattr(self, name), minimum=0.0)
        require_real("clamp_norm_factor", self.clamp_norm_factor, positive=True)
        require_real("early_stop_loss", self.early_stop_loss)  # negative: never stop early
        require_bool("mom2_adjustment", self.mom2_adjustment)
        if not isinstance(self.stats_corpus, str) or not self.stats_corpus.strip():
            raise ValueError(f"stats_corpus must name a corpus, got {self.stats_corpus!r}")
        if self.stats_tokens is not None:
            require_positive_integer("stats_tokens", self.stats_tokens, extra=" (or None for 10 x the key width)")
        templates = self.context_templates
        if not isinstance(templates, (list, tuple)) or not all(
                isinstance(pair, (list, tuple)) and len(pair) == 2 and all(is_integer(v) and v >= 1 for v in pair)
                for pair in templates):
            raise ValueError(f"context_templates must be a list of [length, count] pairs of positive integers, "
                             f"got {templates!r}")
        self.context_templates = tuple((int(length), int(count)) for length, count in templates)
        if not is_integer(self.template_seed) or self.template_seed < 0:
            raise ValueError(f"template_seed must be an integer >= 0, got {self.template_seed!r}")

"""ROME's hyper-parameters: the original's for GPT-2 XL (Meng et al. 2022, ``hparams/ROME/gpt2-xl.json``),
the edited block given per architecture as a fraction of the depth."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

from ..core.config import require_bool
from ..core.locate import LocateThenEditConfig

__all__ = ["ARCH_DEFAULTS", "ROMEConfig"]

# The block ROME edits when ``layers`` is None, as a fraction of (blocks - 1): GPT-2 XL's block 17
# of 48 in the original; GPT-J's 5 of 28 and LLaMA-7B's 5 of 32 in EasyEdit's hparams.
ARCH_DEFAULTS: Dict[str, float] = {"gpt2": 17 / 47, "gpt_neo": 17 / 47, "gptj": 5 / 27, "llama": 5 / 31,
                                   "mistral": 5 / 31, "qwen2": 5 / 31, "qwen3": 5 / 31}


@dataclass
class ROMEConfig(LocateThenEditConfig):
    """``layers``: the block(s) whose MLP output projection is rewritten (None: the architecture's).

    ``v_steps``, ``v_lr``: Adam on the value ``v*`` (the MLP output at the subject's last token);
    ``v_weight_decay``: ``||δ|| / ||v||²`` in its loss; ``clamp_norm_factor``: ``||δ|| <= factor * ||v||``;
    ``kl_factor``: the KL "essence" term on ``"{subject} is a"``; ``early_stop_loss``: stop once the
    loss is below it. ``mom2_adjustment``: weigh the update by ``C⁻¹`` (the key statistics of
    ``sss.stats``, over ``stats_tokens`` tokens of ``stats_corpus``; None: 10 x the key width).
    ``context_templates``: ``(length, count)`` pairs of prefixes the model samples (seeded by
    ``template_seed``) that ``k*`` is averaged over and ``v*`` is optimised under.
    """

    mom2_adjustment: bool = True

    def __post_init__(self):
        super().__post_init__()
        require_bool("mom2_adjustment", self.mom2_adjustment)

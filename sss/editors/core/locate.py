"""What ROME and MEMIT share: locate-then-edit editors of MLP output projections.

Both read the keys at the subject's last token (:mod:`.subject`), search a value there
(:mod:`.value`) and weigh their closed-form update by the key statistics of :mod:`sss.stats`. This
base resolves the edited blocks, refuses requests without their subject before anything changes,
and prepares the sampled prefixes and the statistics *before* the edit's transaction (where
Ctrl-C is held back): statistics can take hours to compute, and an interrupted run resumes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ...data import EditRequest
from ...models import layout_of, mlp_out_path, num_blocks
from ...stats import key_second_moment
from .config import EditorConfig, check_locate_then_edit
from .editor import Editor
from .subject import sampled_prefixes, subject_last_index

__all__ = ["LocateThenEdit", "LocateThenEditConfig"]


@dataclass
class LocateThenEditConfig(EditorConfig):
    """The fields ROME and MEMIT share (each sets its own defaults; see their configs)."""

    layers: Optional[Tuple[int, ...]] = None
    v_steps: int = 20
    v_lr: float = 0.5
    v_weight_decay: float = 0.5
    clamp_norm_factor: float = 4.0
    kl_factor: float = 0.0625
    early_stop_loss: float = 0.05
    stats_corpus: str = "model-samples"
    stats_tokens: Optional[int] = None
    context_templates: Tuple[Tuple[int, int], ...] = ((5, 10), (10, 10))
    template_seed: int = 0

    def __post_init__(self):
        check_locate_then_edit(self)


class LocateThenEdit(Editor):
    """Base of ROME and MEMIT: subclasses set ``default_layers`` and implement ``_apply``."""

    prefix_starts: Sequence[str] = ("The",)
    prefix_separator = " "

    def __init__(self, model, tokenizer, config=None, **kwargs):
        super().__init__(model, tokenizer, config, **kwargs)
        layout_of(model)  # an unknown architecture fails here, with the list of known ones
        blocks = num_blocks(model)
        if self.config.layers is None:
            self.config.layers = self.default_layers(model.config.model_type, blocks)
        bad = [layer for layer in self.config.layers if not -blocks <= layer < blocks]
        if bad:
            raise ValueError(f"layers={list(self.config.layers)}: layer {bad[0]} is out of range for a model with "
                             f"{blocks} blocks (0..{blocks - 1}, or negative to count back)")
        self.config.layers = tuple(sorted({layer % blocks for layer in self.config.layers}))
        self.weight_names = [f"{mlp_out_path(model, layer)}.weight" for layer in self.config.layers]
        self.moments: Dict[int, torch.Tensor] = {}
        self.prefixes: Optional[List[str]] = None

    def default_layers(self, model_type: str, blocks: int) -> Tuple[int, ...]:
        raise NotImplementedError

    def needs_statistics(self) -> bool:
        return True

    def edit(self, requests):
        self.prepare()
        return super().edit(requests)

    def prepare(self) -> None:
        """Sample the prefixes and compute (or load) each edited block's key statistics, once."""
        if self.prefixes is None:
            self.prefixes = sampled_prefixes(self.base_model, self.tokenizer, self.config.context_templates,
                                             self.config.template_seed, starts=self.prefix_starts,
                                             separator=self.prefix_separator)
        if self.needs_statistics():
            for layer in self.config.layers:
                if layer not in self.moments:
                    self.moments[layer] = key_second_moment(
                        self.base_model, self.tokenizer, layer, corpus=self.config.stats_corpus,
                        tokens=self.config.stats_tokens, progress=self.progress)

    def check_subjects(self, requests: List[EditRequest]) -> None:
        """Refuse, before anything changes, a request whose subject is missing or not a token span."""
        for request in requests:
            if not request.subject:
                raise ValueError(f"{self.display_name} needs the request's subject (where the fact is looked up): "
                                 f"{request.prompt!r}")
            subject_last_index(self.tokenizer, request.prompt, request.subject)

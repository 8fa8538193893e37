"""ROME: Rank-One Model Editing (Meng et al. 2022), the update of one MLP output projection.

The projection ``W`` of a mid-depth block is read as a key-value memory: the key ``k`` (its input)
at the subject's last token retrieves the value ``v = W k`` (its output). An edit

1. averages the key at the subject's last token over prefixes the model samples: ``k*``;
2. finds the value ``v*`` that makes the model say the target (:mod:`.value`);
3. writes the rank-one update ``W' = W + Λ uᵀ`` with ``u = C⁻¹ k* / ||C⁻¹ k*||`` and
   ``Λ = (v* - W k) / (uᵀ k)``, ``k`` the key at the subject's last token of the prompt itself,
   so that ``W' k = v*`` while every key ``x`` with ``uᵀ x = 0`` — orthogonal to ``k*`` in the
   ``C⁻¹`` inner product — is mapped as before.

``C = E[k kᵀ]`` are the key statistics of :mod:`sss.stats` (computed on first use, cached on disk);
``u`` is computed with a float64 solve rather than an explicit inverse. Several requests in one
``edit`` are applied one after the other (each sees the ones before), as the original does.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional

import torch

from ...data import EditRequest
from ...models import is_conv1d, layout_of, mlp_out_path, num_blocks
from ...stats import key_second_moment
from ..core import Editor, WeightEditHandle, register_editor, snapshot
from ..core.grad_flags import train_only
from .config import ARCH_DEFAULTS, ROMEConfig
from .subject import in_context, sampled_prefixes, subject_last_index
from .update import RankOneUpdate, keys_at
from .value import optimise_value

logger = logging.getLogger(__name__)


@register_editor("rome", display="ROME")
class ROME(Editor):
    """``ROME(model, tokenizer, config=None, *, regularizer=None, progress=True, **overrides)``."""

    config_class = ROMEConfig
    study_options = {"smoke": {"v_steps": 3, "stats_tokens": 256, "context_templates": [[5, 2]]}}

    def __init__(self, model, tokenizer, config: Optional[ROMEConfig] = None, **kwargs):
        super().__init__(model, tokenizer, config, **kwargs)
        layout = layout_of(model)
        blocks = num_blocks(model)
        if self.config.layers is None:
            fraction = ARCH_DEFAULTS.get(model.config.model_type, ARCH_DEFAULTS["gpt2"])
            self.config.layers = (round(fraction * (blocks - 1)),)
        bad = [layer for layer in self.config.layers if not -blocks <= layer < blocks]
        if bad:
            raise ValueError(f"layers={list(self.config.layers)}: layer {bad[0]} is out of range for a model with "
                             f"{blocks} blocks (0..{blocks - 1}, or negative to count back)")
        self.config.layers = tuple(sorted({layer % blocks for layer in self.config.layers}))
        self.weight_names = [f"{mlp_out_path(model, layer)}.weight" for layer in self.config.layers]
        del layout
        self._moments: Dict[int, torch.Tensor] = {}
        self._prefixes: Optional[List[str]] = None
        self.updates: List[RankOneUpdate] = []  # those of the latest edit, for inspection

    def edit(self, requests):
        # The statistics and the prefixes are made before the edit's transaction, where Ctrl-C
        # is held back: computing statistics can take hours, and an interrupted run resumes.
        self.prepare()
        return super().edit(requests)

    def prepare(self) -> None:
        """Sample the prefixes and compute (or load) the key statistics, once."""
        if self._prefixes is None:
            self._prefixes = sampled_prefixes(self.base_model, self.tokenizer, self.config.context_templates,
                                              self.config.template_seed)
        if self.config.mom2_adjustment:
            for layer in self.config.layers:
                if layer not in self._moments:
                    self._moments[layer] = key_second_moment(
                        self.base_model, self.tokenizer, layer, corpus=self.config.stats_corpus,
                        tokens=self.config.stats_tokens, progress=self.progress)

    def _apply(self, requests: List[EditRequest]) -> WeightEditHandle:
        for request in requests:
            if not request.subject:
                raise ValueError(f"ROME needs the request's subject (where the fact is looked up): {request.prompt!r}")
            subject_last_index(self.tokenizer, request.prompt, request.subject)  # refused before anything changes
        model = self.base_model
        originals = snapshot(model, self.weight_names)
        self.updates = []
        history = []
        with train_only(model, []), torch.enable_grad():
            for request in requests:
                for layer in self.config.layers:
                    update = self._rank_one(request, layer)
                    update.apply(model.get_submodule(mlp_out_path(model, layer)))
                    self.updates.append(update)
                    history.append({"layer": layer, "steps": update.history})
        return WeightEditHandle(model, originals, requests, self.name, {"history": history})

    def _rank_one(self, request: EditRequest, layer: int) -> RankOneUpdate:
        model, tokenizer = self.base_model, self.tokenizer
        projection = model.get_submodule(mlp_out_path(model, layer))
        contexts = [in_context(prefix, request.subject) for prefix in self._prefixes]
        averaged = keys_at(model, tokenizer, projection, contexts, request.subject).mean(0)
        key = keys_at(model, tokenizer, projection, [request.prompt], request.subject)[0]
        direction = averaged.double()
        if self.config.mom2_adjustment:
            direction = torch.linalg.solve(self._moments[layer].to(direction.device), direction)
        u = (direction / direction.norm()).to(key.dtype)
        target, value, steps = optimise_value(model, tokenizer, request, layer, self._prefixes, self.config,
                                              self.regularizer, show_progress=self.progress)
        return RankOneUpdate(layer=layer, key=key, averaged_key=averaged, value=value, target=target, u=u,
                             right=(target - value) / torch.dot(key, u), history=steps,
                             transposed=is_conv1d(projection))

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
from typing import List, Tuple

import torch

from ...data import EditRequest
from ...models import is_conv1d, mlp_out_path
from ..core import WeightEditHandle, register_editor, snapshot
from ..core.grad_flags import train_only
from ..core.locate import LocateThenEdit
from ..core.subject import in_context, keys_at
from ..core.value import mlp_path, optimise_value
from .config import ARCH_DEFAULTS, ROMEConfig
from .update import RankOneUpdate

logger = logging.getLogger(__name__)


@register_editor("rome", display="ROME")
class ROME(LocateThenEdit):
    """``ROME(model, tokenizer, config=None, *, regularizer=None, progress=True, **overrides)``."""

    config_class = ROMEConfig
    study_options = {"smoke": {"v_steps": 3, "stats_tokens": 256, "context_templates": [[5, 2]]}}

    def __init__(self, model, tokenizer, config=None, **kwargs):
        super().__init__(model, tokenizer, config, **kwargs)
        self.updates: List[RankOneUpdate] = []  # those of the latest edit, for inspection

    def default_layers(self, model_type: str, blocks: int) -> Tuple[int, ...]:
        return (round(ARCH_DEFAULTS.get(model_type, ARCH_DEFAULTS["gpt2"]) * (blocks - 1)),)

    def needs_statistics(self) -> bool:
        return self.config.mom2_adjustment

    def _apply(self, requests: List[EditRequest]) -> WeightEditHandle:
        self.check_subjects(requests)
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
        contexts = [in_context(prefix, request.subject) for prefix in self.prefixes]
        averaged = keys_at(model, tokenizer, projection, contexts, request.subject, request.subject).mean(0)
        key = keys_at(model, tokenizer, projection, [request.prompt], request.subject, request.prompt)[0]
        direction = averaged.double()
        if self.config.mom2_adjustment:
            direction = torch.linalg.solve(self.moments[layer].to(direction.device), direction)
        u = (direction / direction.norm()).to(key.dtype)
        target, value, steps = optimise_value(model, tokenizer, request, model.get_submodule(mlp_path(model, layer)),
                                              self.prefixes, self.config, self.regularizer,
                                              show_progress=self.progress, desc="ROME v*")
        return RankOneUpdate(layer=layer, key=key, averaged_key=averaged, value=value, target=target, u=u,
                             right=(target - value) / torch.dot(key, u), history=steps,
                             transposed=is_conv1d(projection))

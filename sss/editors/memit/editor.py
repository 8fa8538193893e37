"""MEMIT: Mass-Editing Memory in a Transformer (Meng et al. 2023), many facts in several blocks at once.

For a batch of requests, MEMIT

1. finds, for each request, the residual-stream value ``z*`` after the last edited block that makes
   the model say its target (the value search of ROME on the block's output, :mod:`..core.value`);
2. walks the edited blocks from the first: at block ``l`` (``i``-th of ``L``) it reads the keys ``K``
   at each subject's last token (averaged over the sampled prefixes, as the original), the current
   residual stream ``z`` after the last block, and writes ``R = (z* - z) / (L - i)`` — the part of the
   remaining gap this block takes — with one least-squares solve for all requests
   (:func:`.solve.spread_update`, ``λ = mom2_update_weight``);
3. later blocks then see the earlier blocks' changes, so the gap left shrinks block by block.

Requests in one ``edit`` are one batch; sequential editing is several ``edit`` calls.
"""
from __future__ import annotations

import logging
from typing import List, Tuple

import torch

from ...data import EditRequest
from ...models import is_conv1d, layout_of, mlp_out_path
from ..core import WeightEditHandle, register_editor, snapshot
from ..core.grad_flags import train_only
from ..core.locate import LocateThenEdit
from ..core.subject import in_context, keys_at, read_at
from ..core.value import optimise_value
from .config import ARCH_DEFAULTS, MEMITConfig
from .solve import spread_update

logger = logging.getLogger(__name__)


@register_editor("memit", display="MEMIT")
class MEMIT(LocateThenEdit):
    """``MEMIT(model, tokenizer, config=None, *, regularizer=None, progress=True, **overrides)``."""

    config_class = MEMITConfig
    study_options = {"smoke": {"v_steps": 3, "stats_tokens": 256, "context_templates": [[5, 1]]}}
    prefix_starts = ("The", "Therefore", "Because", "I", "You")  # the original's context templates
    prefix_separator = ". "

    def __init__(self, model, tokenizer, config=None, **kwargs):
        super().__init__(model, tokenizer, config, **kwargs)
        if self.config.mom2_update_weight is None:
            self.config.mom2_update_weight = ARCH_DEFAULTS.get(model.config.model_type, ARCH_DEFAULTS["gpt2"])[1]
        self.solves: List[dict] = []  # per block of the latest edit: keys, residuals, change (for inspection)

    def default_layers(self, model_type: str, blocks: int) -> Tuple[int, ...]:
        (first, last), _ = ARCH_DEFAULTS.get(model_type, ARCH_DEFAULTS["gpt2"])
        return tuple(range(round(first * (blocks - 1)), round(last * (blocks - 1)) + 1))

    def _apply(self, requests: List[EditRequest]) -> WeightEditHandle:
        self.check_subjects(requests)
        model = self.base_model
        originals = snapshot(model, self.weight_names)
        last = model.get_submodule(f"{layout_of(model).blocks}.{self.config.layers[-1]}")
        history = []
        with train_only(model, []), torch.enable_grad():
            targets = []
            for request in requests:
                target, _, steps = optimise_value(model, self.tokenizer, request, last, self.prefixes, self.config,
                                                  self.regularizer, show_progress=self.progress, desc="MEMIT z*")
                targets.append(target)
                history.append({"request": request.prompt, "steps": steps})
            self.solves = [self._write_block(requests, torch.stack(targets), last, i, layer)
                           for i, layer in enumerate(self.config.layers)]
        return WeightEditHandle(model, originals, requests, self.name, {"history": history})

    def _write_block(self, requests, targets, last, index: int, layer: int) -> dict:
        model, tokenizer = self.base_model, self.tokenizer
        projection = model.get_submodule(mlp_out_path(model, layer))
        keys = torch.stack([self._key(projection, request) for request in requests])
        current = torch.stack([read_at(model, tokenizer, last, [r.prompt], r.subject, r.prompt, output=True)[0]
                               for r in requests])
        residuals = (targets - current) / (len(self.config.layers) - index)
        change = spread_update(keys, residuals, self.moments[layer].to(keys.device), self.config.mom2_update_weight)
        with torch.no_grad():
            projection.weight.add_((change.T if is_conv1d(projection) else change).to(projection.weight.dtype))
        return {"layer": layer, "keys": keys, "residuals": residuals, "change": change}

    def _key(self, projection, request: EditRequest) -> torch.Tensor:
        """The original's key: the mean of the bare prompt's key and the prefixed prompts' mean key."""
        texts = [in_context(prefix, request.prompt) for prefix in self.prefixes]
        keys = keys_at(self.base_model, self.tokenizer, projection, texts, request.subject, request.prompt)
        return keys[0] if len(keys) == 1 else (keys[0] + keys[1:].mean(0)) / 2

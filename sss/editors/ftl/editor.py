"""FT-L: constrained fine-tuning of one MLP output projection (Yao et al. 2023; EasyEdit's FT-L).

Adam on the MLP output weight (and bias, where the architecture has one) of the chosen blocks,
everything else frozen; after every step the weights are clamped to an L-infinity ball of
radius ``norm_constraint`` around their pre-edit values; training stops early once the edit loss
is below ``early_stop_loss``. With a regularizer each step optimises Eq. 10,
``(1 - C) * L_e + C * penalty``, the penalty built with ``create_graph=True`` so that its own
gradient reaches the trained weights.

A step runs only what the trained weights change (:mod:`.cached_step`): the frozen blocks below
run once per edit, the LM head only where the loss reads it (``sss.losses.head``); several
independent edits can train together (:mod:`.grouped`, ``FTL.edit_each``).
"""
from __future__ import annotations

import contextlib
import logging
from typing import Dict, Iterable, Iterator, List, Optional

import torch

from ...data import EditRequest, encode_for
from ...data.requests import as_request_list
from ...losses import edit_loss
from ...models import layout_of, mlp_out_path, num_blocks, second_order_attention
from ...progress import progress
from ..core import Editor, WeightEditHandle, register_editor, snapshot
from ..core.interrupts import deferred_interrupts, raise_if_interrupted
from ..core.grad_flags import train_only
from .cached_step import step_forward
from .config import ARCH_DEFAULTS, FTLConfig
from .grouped import train_each, unsupported_reason

logger = logging.getLogger(__name__)


@register_editor("ft-l", display="FT-L")
class FTL(Editor):
    """``FTL(model, tokenizer, config=None, *, regularizer=None, progress=True, **overrides)``."""

    config_class = FTLConfig
    study_options = {"smoke": {"steps": 3}}

    def __init__(self, model, tokenizer, config: Optional[FTLConfig] = None, **kwargs):
        super().__init__(model, tokenizer, config, **kwargs)
        layout_of(model)  # an unknown architecture fails here, with the list of known ones
        defaults = ARCH_DEFAULTS.get(model.config.model_type, ARCH_DEFAULTS["gpt2"])
        blocks = num_blocks(model)
        if self.config.layers is None:
            self.config.layers = (round(defaults["depth_fraction"] * (blocks - 1)),)
        # Negative indices count back (as in MEND); stored as positive ones so reports are unambiguous.
        bad = [layer for layer in self.config.layers if not -blocks <= layer < blocks]
        if bad:
            raise ValueError(f"layers={list(self.config.layers)}: layer {bad[0]} is out of range for a model with "
                             f"{blocks} blocks (0..{blocks - 1}, or negative to count back)")
        resolved = tuple(layer % blocks for layer in self.config.layers)
        if len(set(resolved)) != len(resolved):
            raise ValueError(f"layers={list(self.config.layers)} names a block more than once")
        self.config.layers = resolved
        if self.config.norm_constraint is None:
            self.config.norm_constraint = defaults["norm_constraint"]
        self.parameter_names = self._trained_parameter_names()
        params = dict(self.base_model.named_parameters())
        half = [n for n in self.parameter_names if params[n].dtype == torch.float16 and params[n].device.type == "cpu"]
        if half:  # Adam's squared gradients overflow float16 within a few steps: NaN weights, not an edit
            raise ValueError(f"FT-L cannot train float16 weights on a CPU ({half[0]}): load the model in "
                             "float32 or bfloat16 (load_model(..., dtype=torch.float32))")

    def _trained_parameter_names(self) -> List[str]:
        names = []
        params = dict(self.base_model.named_parameters())
        for layer in self.config.layers:
            path = mlp_out_path(self.base_model, layer)
            names += [f"{path}.{kind}" for kind in ("weight", "bias") if f"{path}.{kind}" in params]
        return names

    def edit_each(self, requests: Iterable[EditRequest], *, at_once: int = 8) -> Iterator[WeightEditHandle]:
        """Edit each request on its own, as ``edit(request)`` would, training up to ``at_once`` together.

        Yields one applied edit per request, in order; restore each before taking the next (else
        the iteration undoes it and stops with an error; closing the iteration restores the
        current one). The trained weights equal ``edit(request)``'s to float rounding
        (``sss.editors.ftl.grouped``: the frozen blocks run once per step for the whole group).
        Where the edits cannot train together (a regularizer, several blocks, training mode)
        they are made one at a time.
        """
        requests = as_request_list(requests, "edit_each()")
        if not isinstance(at_once, int) or isinstance(at_once, bool) or at_once < 1:
            raise ValueError(f"at_once must be a positive integer, got {at_once!r}")
        together = unsupported_reason(self) is None
        previous = None
        for start in range(0, len(requests), at_once):
            group = requests[start:start + at_once]
            _require_restored(previous)  # a group trains from the unedited model
            with deferred_interrupts():  # Ctrl-C stops the group between steps, its flags and hooks put back
                trained = train_each(self, group) if together and len(group) > 1 else [None] * len(group)
            for request, result in zip(group, trained):
                _require_restored(previous)
                previous = None
                try:
                    previous = self.edit(request) if result is None else self._apply_trained(request, *result)
                    yield previous
                except BaseException:  # closed early, or Ctrl-C before the caller got the handle
                    if previous is not None and not previous.restored:
                        previous.restore()
                    raise

    def _apply_trained(self, request: EditRequest, values: Dict[str, torch.Tensor], history: List[dict]
                       ) -> WeightEditHandle:
        """Put weights trained by ``grouped.train_each`` in place, as ``edit(request)`` would leave them."""
        def apply() -> WeightEditHandle:
            originals = snapshot(self.base_model, self.parameter_names)
            params = dict(self.base_model.named_parameters())
            with torch.no_grad():
                for name, value in values.items():
                    params[name].copy_(value)
            return WeightEditHandle(self.base_model, originals, [request], self.name, {"history": history})
        return self._transact(apply)

    def _apply(self, requests: List[EditRequest]) -> WeightEditHandle:
        # Runs inside Editor.edit's transaction: whatever is raised while training (Ctrl-C, out of
        # memory), the weights, their .grad and the modules' modes are put back there.
        model = self.base_model
        batch = encode_for(model, self.tokenizer, [r.prompt for r in requests], [r.target_new for r in requests])
        originals = snapshot(model, self.parameter_names)
        params = dict(model.named_parameters())
        trained = [params[name] for name in self.parameter_names]
        history = self._train(model, batch, trained, originals)
        logger.debug("FT-L on %d request(s): %s", len(requests), history)
        return WeightEditHandle(model, originals, requests, self.name, {"history": history})

    def _train(self, model, batch, trained, originals) -> List[dict]:
        """The optimisation itself; changes ``trained`` in place and returns the loss history."""
        config, regularizer = self.config, self.regularizer
        radius = config.norm_constraint
        history = []
        with train_only(model, trained), torch.enable_grad():
            # The frozen part runs once here; each step runs only what the trained weights change.
            forward = step_forward(model, batch, config.objective, regularizer, min(config.layers))
            optimizer = torch.optim.Adam(trained, lr=config.lr, weight_decay=config.weight_decay)
            with torch.no_grad():  # the ball's bounds, once per edit (the same values at every step)
                bounds = [(originals[name] - radius, originals[name] + radius) for name in self.parameter_names]
            steps = progress(range(config.steps), desc="FT-L", enabled=self.progress, inner=True, unit="step")
            for step in steps:
                raise_if_interrupted()  # a safe point: Ctrl-C stops the edit here, and it is undone
                optimizer.zero_grad(set_to_none=True)
                # SSS differentiates a gradient: attention must use kernels with a double backward.
                with second_order_attention(model) if regularizer is not None else contextlib.nullcontext():
                    logits, loss_batch, penalty = forward()
                edit = edit_loss(logits, loss_batch, config.objective).mean()
                record = {"step": step, "edit_loss": edit.item()}
                if penalty is not None:
                    record["penalty"] = penalty.item()
                history.append(record)
                steps.set_postfix(loss=f"{record['edit_loss']:.4f}")
                if record["edit_loss"] < config.early_stop_loss:
                    break
                loss = edit if penalty is None else regularizer.combine(edit, penalty)
                # To the trained weights only: the graph of a frozen part kept for SSS (see
                # cached_step) is neither differentiated for nothing nor freed.
                loss.backward(inputs=trained)
                optimizer.step()
                with torch.no_grad():
                    for param, (low, high) in zip(trained, bounds):
                        param.clamp_(low, high)
        return history


def _require_restored(handle: Optional[WeightEditHandle]) -> None:
    """``edit_each``'s rule: the previous edit is undone before the next one is made."""
    if handle is not None and not handle.restored:
        handle.restore()  # ending here must not leave an edit applied
        raise RuntimeError("edit_each(): restore each edit before taking the next "
                           "(the one left applied has been undone)")

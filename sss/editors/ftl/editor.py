"""FT-L: constrained fine-tuning of one MLP output projection (Yao et al. 2023; EasyEdit's FT-L).

Adam on the MLP output weight (and bias, where the architecture has one) of the chosen blocks,
everything else frozen; after every step the weights are clamped to an L-infinity ball of
radius ``norm_constraint`` around their pre-edit values; training stops early once the edit loss
is below ``early_stop_loss``. With a regularizer each step optimises Eq. 10,
``(1 - C) * L_e + C * penalty``, the penalty built with ``create_graph=True`` so that its own
gradient reaches the trained weights.

A step runs only what the trained weights change (sss/editors/ftl/cached_step.py): the frozen blocks
below run once per edit, the LM head only where the loss reads it (through a transposed copy,
sss/editors/ftl/frozen_weights.py).
"""
from __future__ import annotations

import contextlib
import logging
import math
import numbers
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

import torch
from tqdm.auto import tqdm

from ...data import EditRequest, encode_pairs
from ...data.requests import as_request_list
from ...data.tokenize import context_length
from ...losses import edit_loss
from ...models import layout_of, mlp_out_path, num_blocks, second_order_attention
from ..core.base import Editor, EditorConfig, WeightEditHandle, register_editor, snapshot
from .cached_step import step_forward, train_only
from .grouped import train_each, unsupported_reason
from ..core.history import transaction

logger = logging.getLogger(__name__)

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
        # Checked by type, not coerced: int("10") would quietly turn layers="10" into blocks 1, 0.
        if not isinstance(self.objective, str) or self.objective not in OBJECTIVES:
            raise ValueError(f"unknown FT-L objective {self.objective!r}; choose one of {', '.join(OBJECTIVES)}")
        if not _is_int(self.steps) or self.steps < 1:
            raise ValueError(f"steps must be an integer of at least 1, got {self.steps!r}")
        _require_real("lr", self.lr, positive=True)
        _require_real("weight_decay", self.weight_decay, minimum=0.0)
        _require_real("early_stop_loss", self.early_stop_loss)  # negative: never stop early
        if self.norm_constraint is not None:
            _require_real("norm_constraint", self.norm_constraint, positive=True, extra=" (or None for the default)")
        if self.layers is not None:
            self.layers = _block_list(self.layers)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _require_real(name: str, value, *, positive: bool = False, minimum: Optional[float] = None,
                  extra: str = "") -> None:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and positive and value <= 0:
        ok = False
    if ok and minimum is not None and value < minimum:
        ok = False
    if not ok:
        want = "a positive number" if positive else "a finite number" if minimum is None else f"a number >= {minimum}"
        raise ValueError(f"{name} must be {want}{extra}, got {value!r}")


def _block_list(layers) -> Tuple[int, ...]:
    """``layers`` as a tuple of block indices: one int or a non-empty sequence of ints."""
    if _is_int(layers):
        return (int(layers),)
    if isinstance(layers, (str, bytes)) or not isinstance(layers, (list, tuple)) \
            or not all(_is_int(layer) for layer in layers):
        raise ValueError(f"layers must be a block index or a list of block indices (integers), got {layers!r}")
    if not layers:
        raise ValueError("layers must name at least one block, got an empty list")
    return tuple(int(layer) for layer in layers)


@register_editor("ft-l", display="FT-L")
class FTL(Editor):
    """``FTL(model, tokenizer, config=None, *, regularizer=None, progress=True, **overrides)``."""

    config_class = FTLConfig

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
            trained = train_each(self, group) if together and len(group) > 1 else [None] * len(group)
            for request, result in zip(group, trained):
                _require_restored(previous)
                previous = self.edit(request) if result is None else self._apply_trained(request, *result)
                try:
                    yield previous
                except GeneratorExit:
                    if not previous.restored:
                        previous.restore()
                    raise

    def _apply_trained(self, request: EditRequest, values: Dict[str, torch.Tensor], history: List[dict]
                       ) -> WeightEditHandle:
        """Put weights trained by ``ft_parallel.train_each`` in place, as ``edit(request)`` would leave them."""
        with transaction(self.edited_modules(), self.undo_point()):
            originals = snapshot(self.base_model, self.parameter_names)
            params = dict(self.base_model.named_parameters())
            with torch.no_grad():
                for name, value in values.items():
                    params[name].copy_(value)
            return WeightEditHandle(self.base_model, originals, [request], self.name, {"history": history})

    def _apply(self, requests: List[EditRequest]) -> WeightEditHandle:
        model = self.base_model
        batch = encode_pairs(self.tokenizer, [r.prompt for r in requests], [r.target_new for r in requests],
                             max_length=context_length(self.tokenizer, model), device=self.device)
        originals = snapshot(model, self.parameter_names)
        params = dict(model.named_parameters())
        trained = [params[name] for name in self.parameter_names]
        # A transaction: whatever is raised while training (Ctrl-C, out of memory, a NaN check),
        # the model leaves as it came, bit for bit, because no handle would exist to undo it.
        grads = [p.grad for p in trained]
        modes = {module: module.training for module in model.modules()}
        try:
            history = self._train(model, batch, trained, originals)
            logger.debug("FT-L on %d request(s): %s", len(requests), history)
            return WeightEditHandle(model, originals, requests, self.name, {"history": history})
        except BaseException:
            with torch.no_grad():
                for name, param, grad in zip(self.parameter_names, trained, grads):
                    param.copy_(originals[name])
                    param.grad = grad
            raise
        finally:
            for module, mode in modes.items():
                if module.training != mode:
                    module.train(mode)

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
            steps = tqdm(range(config.steps), desc="FT-L", disable=not self.progress, leave=False)
            for step in steps:
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
                # ft_forward) is neither differentiated for nothing nor freed.
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

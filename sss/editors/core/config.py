"""Editor configs: the base dataclass, the trained editors' outer-loss weights, and the checks
every config's ``__post_init__`` shares (checked by type, never coerced: ``int("10")`` would
quietly turn ``layers="10"`` into blocks 1, 0)."""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Optional, Tuple

__all__ = ["EditorConfig", "OuterLossConfig", "block_list", "check_locate_then_edit", "is_integer", "require_bool",
           "require_positive_integer", "require_real"]


@dataclasses.dataclass
class EditorConfig:
    """Base of every editor's hyper-parameters; subclasses add fields with the paper's defaults."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def is_integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def require_real(name: str, value, *, positive: bool = False, minimum: Optional[float] = None,
                 extra: str = "") -> None:
    """``value`` must be a finite real number (a bool is a mistake), positive or at least ``minimum``."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and positive and value <= 0:
        ok = False
    if ok and minimum is not None and value < minimum:
        ok = False
    if not ok:
        want = "a positive number" if positive else "a finite number" if minimum is None else f"a number >= {minimum}"
        raise ValueError(f"{name} must be {want}{extra}, got {value!r}")


def require_positive_integer(name: str, value, minimum: int = 1, extra: str = "") -> None:
    if not is_integer(value) or value < minimum:
        raise ValueError(f"{name} must be an integer of at least {minimum}{extra}, got {value!r}")


def require_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")


def block_list(layers, name: str = "layers") -> Tuple[int, ...]:
    """``layers`` as a tuple of block indices: one int or a non-empty list or tuple of ints."""
    if is_integer(layers):
        return (int(layers),)
    if isinstance(layers, (str, bytes)) or not isinstance(layers, (list, tuple)) \
            or not all(is_integer(layer) for layer in layers):
        raise ValueError(f"{name} must be a block index or a list of block indices (integers), got {layers!r}")
    if not layers:
        raise ValueError(f"{name} must name at least one block, got an empty list")
    return tuple(int(layer) for layer in layers)


@dataclasses.dataclass
class OuterLossConfig(EditorConfig):
    """The weights of ``L_ori = c_e * L_e + c_loc * L_loc`` (Eq. 4-6), shared by the trained editors."""

    c_e: float = 0.1
    c_loc: float = 1.0

    def __post_init__(self):
        for name in ("c_e", "c_loc"):
            require_real(f"{type(self).__name__}.{name}", getattr(self, name), minimum=0.0)


def check_locate_then_edit(config) -> None:
    """The fields ROME and MEMIT share: the value search (``sss.editors.core.value``), the key
    statistics and the sampled context templates. Normalises ``layers`` and ``context_templates``."""
    if config.layers is not None:
        config.layers = block_list(config.layers)
    require_positive_integer("v_steps", config.v_steps)
    require_real("v_lr", config.v_lr, positive=True)
    for name in ("v_weight_decay", "kl_factor"):
        require_real(name, getattr(config, name), minimum=0.0)
    require_real("clamp_norm_factor", config.clamp_norm_factor, positive=True)
    require_real("early_stop_loss", config.early_stop_loss)  # negative: never stop early
    if not isinstance(config.stats_corpus, str) or not config.stats_corpus.strip():
        raise ValueError(f"stats_corpus must name a corpus, got {config.stats_corpus!r}")
    if config.stats_tokens is not None:
        require_positive_integer("stats_tokens", config.stats_tokens, extra=" (or None for 10 x the key width)")
    templates = config.context_templates
    if not isinstance(templates, (list, tuple)) or not all(
            isinstance(pair, (list, tuple)) and len(pair) == 2 and all(is_integer(v) and v >= 1 for v in pair)
            for pair in templates):
        raise ValueError(f"context_templates must be a list of [length, count] pairs of positive integers, "
                         f"got {templates!r}")
    config.context_templates = tuple((int(length), int(count)) for length, count in templates)
    if not is_integer(config.template_seed) or config.template_seed < 0:
        raise ValueError(f"template_seed must be an integer >= 0, got {config.template_seed!r}")

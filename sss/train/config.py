"""The loop's settings, and what an editor implements to be trained (see the package docstring)."""
from __future__ import annotations

import math

import dataclasses
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Protocol, Tuple, runtime_checkable

import torch
from torch import nn

from ..data import EditRequest, LocalityProbe


@dataclass
class TrainConfig:
    """The loop's hyper-parameters; the editor's own live in its config.

    ``lr``: per-group overrides by group name (e.g. ``{"network": 1e-5}``); groups not named
    keep the lr their editor gives them. ``patience``: validations without a new best
    ``early_stop_key`` (a validation metric, lower is better; default the edit loss) before
    stopping (None: never stop early); the best checkpoint is chosen by the same metric.
    ``val_episodes``: how many validation episodes each validation runs (None: all).
    """

    edit_batch_size: int = 1
    episodes_per_step: int = 10
    max_steps: int = 1000
    lr: Dict[str, float] = field(default_factory=dict)
    grad_clip: Optional[float] = 100.0
    val_every: int = 100
    val_episodes: Optional[int] = 50
    val_at_start: bool = True
    patience: Optional[int] = 5
    early_stop_key: str = "edit_loss"
    seed: int = 0
    log_every: int = 1
    out_dir: Optional[str] = None
    resume: bool = True
    restore_best: bool = True
    progress: bool = True

    def __post_init__(self):
        for name in ("edit_batch_size", "episodes_per_step", "max_steps", "val_every", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive integer, got {value!r}")
        if self.val_episodes is not None and self.val_episodes < 1:
            raise ValueError(f"TrainConfig.val_episodes must be positive or None, got {self.val_episodes!r}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"TrainConfig.patience must be positive or None, got {self.patience!r}")
        if self.grad_clip is not None and not (math.isfinite(self.grad_clip) and self.grad_clip > 0):
            raise ValueError(f"TrainConfig.grad_clip must be a positive finite number or None, got {self.grad_clip!r}")
        for group, lr in self.lr.items():
            if not (math.isfinite(lr) and lr > 0):
                raise ValueError(f"TrainConfig.lr[{group!r}] must be a positive finite number, got {lr!r}")
        if self.out_dir is not None:
            self.out_dir = str(self.out_dir)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Episode:
    """One training example: ``requests`` edited together, one out-of-scope probe per request."""

    requests: Tuple[EditRequest, ...]
    locality: Tuple[LocalityProbe, ...]
    index: int = 0  # position in the run's episode stream (for logs and debugging)


@runtime_checkable
class Trainable(Protocol):
    def trainable_module(self) -> nn.Module: ...
    def param_groups(self) -> List[dict]: ...
    def training_loss(self, episode: Episode) -> Tuple[torch.Tensor, Dict[str, float]]: ...
    def validation_metrics(self, episode: Episode) -> Dict[str, float]: ...
    def state_dict(self) -> Dict[str, torch.Tensor]: ...
    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None: ...
    def checkpoint_config(self) -> dict: ...


TRAINABLE_METHODS = ("trainable_module", "param_groups", "training_loss", "validation_metrics", "state_dict",
                     "load_state_dict", "checkpoint_config")


def check_trainable(trainable) -> None:
    """A clear error where ``trainable`` lacks a method of :class:`Trainable`."""
    missing = [name for name in TRAINABLE_METHODS if not callable(getattr(trainable, name, None))]
    if missing:
        raise ValueError(f"{type(trainable).__name__} is not Trainable: it lacks {', '.join(missing)}")


@dataclass
class TrainResult:
    steps: int  # optimizer steps taken in total (including those before a resume)
    best_step: Optional[int]
    best_metrics: Optional[Dict[str, float]]
    stopped_early: bool
    out_dir: Optional[str]


# ----------------------------------------------------------------------------------------------

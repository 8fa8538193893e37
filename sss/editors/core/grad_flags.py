"""Which parameters require grad while an editor trains or runs its inner pass."""
from __future__ import annotations

import contextlib
from typing import Iterable

from torch import nn

__all__ = ["train_only"]


@contextlib.contextmanager
def train_only(model: nn.Module, trained: Iterable[nn.Parameter] = ()):
    """Let only ``trained`` require grad (so backward skips the rest; none: the model is frozen),
    then put every flag back, even on errors."""
    flags = {p: p.requires_grad for p in model.parameters()}
    keep = {id(p) for p in trained}
    try:
        for p in model.parameters():
            p.requires_grad_(id(p) in keep)
        yield
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)

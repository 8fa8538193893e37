"""ROME: rank-one model editing of one MLP output projection (see :mod:`.editor`)."""
from .config import ROMEConfig
from .editor import ROME
from .update import RankOneUpdate

__all__ = ["ROME", "ROMEConfig", "RankOneUpdate"]

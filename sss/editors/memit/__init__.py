"""MEMIT: many facts written into several MLP output projections at once (see :mod:`.editor`)."""
from .config import MEMITConfig
from .editor import MEMIT
from .solve import spread_update

__all__ = ["MEMIT", "MEMITConfig", "spread_update"]

"""FT-L: constrained fine-tuning of one MLP output projection (see :mod:`.editor`)."""
from .editor import FTL, FTLConfig

__all__ = ["FTL", "FTLConfig"]

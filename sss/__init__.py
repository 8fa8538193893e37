"""sss: training-based knowledge editing (FT-L, MEND, SERAC) with the SSS regularizer."""
from .data import EditRequest, LocalityProbe, PortabilityProbe
from .editors import FTL, EditHandle, Editor
from .losses import SparsityRegularizer, SSSRegularizer
from .models import load_model

__version__ = "0.1.0"

__all__ = ["EditRequest", "LocalityProbe", "PortabilityProbe", "Editor", "EditHandle", "FTL",
           "SparsityRegularizer", "SSSRegularizer", "load_model", "__version__"]

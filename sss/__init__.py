"""sss: training-based knowledge editing (FT-L, MEND, SERAC) with the SSS regularizer."""
from .data import EditRequest, LocalityProbe, PortabilityProbe
from .editors import FTL, MEND, SERAC, EditHandle, Editor
from .eval import evaluate
from .losses import SparsityRegularizer, SSSRegularizer, sss_loss, sss_penalty
from .models import load_model

__version__ = "0.1.0"

__all__ = ["EditRequest", "LocalityProbe", "PortabilityProbe", "Editor", "EditHandle", "FTL", "MEND", "SERAC",
           "SparsityRegularizer", "SSSRegularizer", "evaluate", "load_model", "sss_loss", "sss_penalty", "__version__"]
